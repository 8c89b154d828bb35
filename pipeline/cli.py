"""The `eco` command: parses arguments, then calls one library function per subcommand.

Heavy modules (torch, ray, decord, wandb) are imported inside each subcommand so that `eco --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 128x128), got {text!r}") from e


def cmd_model_info(args: argparse.Namespace) -> int:
    from pipeline.model.info import init_info, model_info

    info = model_info(args.variant, num_segments=args.segments, size=args.size, num_classes=args.classes)
    init = None
    if args.init_2d or args.init_3d:
        init = init_info(args.variant, num_classes=args.classes, init_2d=args.init_2d, init_3d=args.init_3d)
    if args.json:
        print(json.dumps({**info, "init": init.to_dict()} if init else info, indent=2))
        return 0
    print(f"ECO-{info['variant'].capitalize()}  {info['num_segments']} segments at {info['size']}x{info['size']}, "
          f"{info['num_classes']} classes")
    print(f"  parameters   {info['params']:,}  (2D {info['params_2d']:,}  3D {info['params_3d']:,}  "
          f"head {info['params_head']:,})")
    print(f"  forward      {info['gmacs']:.1f} GMACs per clip")
    print(f"  output       {tuple(info['output_shape'])}")
    if init is not None:
        print("starting point (the authors': 2D BN-Inception + 3D ResNet-18 files)")
        print("\n".join(f"  {line}" for line in init.describe().splitlines()))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from pipeline.data import manifest, sources

    if args.source == "synthetic":
        from pipeline.data.synthetic import make_synthetic

        summary = make_synthetic(args.out, classes=args.classes, videos_per_class=args.videos_per_class,
                                 size=args.size, frames=args.frames, fps=args.fps, seed=args.seed)
    elif args.source == "shards":
        from pipeline.data.shard_writer import write_shards

        summary = write_shards(args.manifest, args.out, short_side=args.short_side, fps=args.fps,
                               quality=args.quality, max_shard_bytes=args.max_shard_mb * 2**20, format=args.format)
    else:
        if args.source == "folder":
            source = sources.FolderSource(args.root)
        elif args.source == "kinetics":
            source = sources.KineticsSource(args.annotations, args.videos)
        elif args.source == "ucf101":
            source = sources.UCF101Source(args.splits, args.videos, split_number=args.split_number)
        else:
            source = sources.TableSource(args.table)
        summary = manifest.prepare(source, args.out, val_fraction=args.val_fraction, seed=args.seed,
                                   probe_timeout_s=args.probe_timeout,
                                   normalize_short_side=args.normalize_short_side, normalize_gop=args.normalize_gop,
                                   decoder=args.decoder, accept_partial=args.accept_partial)
    print(summary.describe() if hasattr(summary, "describe") else summary)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.training.run import train

    cfg = load_config(args.config, args.set)
    result = train(cfg)
    print(result.describe() if hasattr(result, "describe") else result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.training.sweep import load_space, run_sweep

    cfg = load_config(args.config, args.set)
    space = load_space(args.space, cfg)
    result = run_sweep(cfg, space, args.name or Path(args.space).stem)
    print(result.describe())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.training.evaluate import evaluate

    report = evaluate(args.checkpoint, args.manifest, split=args.split, num_clips=args.clips, crops=args.crops,
                      out_dir=args.out, num_cpus=args.num_cpus, actors=args.actors, amp=args.amp,
                      decode_on=args.decode_on)
    print(json.dumps({k: v for k, v in report.items() if k != "per_class"}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline import inference

    if args.online:
        if len(args.videos) != 1:
            raise SystemExit("eco predict --online takes exactly one VIDEO")
        return inference.online_main(args)
    if args.manifest:
        return inference.batch_main(args)
    if not args.videos:
        raise SystemExit("eco predict: give VIDEO paths, --manifest M --out P, or --online VIDEO")
    return inference.predict_main(args)


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.inference.export import export_main

    return export_main(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serving.app import serve_main

    return serve_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"pipeline.bench.{args.name}")
    return module.run(args) or 0


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.bench import check_gpu

    return check_gpu.run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(out_dir=args.out, overrides=args.overrides, videos_per_class=args.videos_per_class) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eco", description="Train and run the ECO video classifier on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-info", help="parameter count, GMACs and output shape of ECO-Lite/Full")
    p.add_argument("--variant", choices=["lite", "full"], default="lite")
    p.add_argument("--segments", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--json", action="store_true")
    p.add_argument("--init-2d", default=None, metavar="FILE",
                   help="TSN's BN-Inception file (path or URI): print which ECO tensors it provides and what is unused")
    p.add_argument("--init-3d", default=None, metavar="FILE",
                   help="the Kinetics 3D ResNet-18 file (path or URI), likewise")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("prepare", help="probe videos and write a Parquet manifest (or synthetic data / frame shards)")
    src = p.add_subparsers(dest="source", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output directory (local path or URI)")
    common.add_argument("--seed", type=int, default=0)
    probe = argparse.ArgumentParser(add_help=False, parents=[common])
    probe.add_argument("--val-fraction", type=float, default=0.1,
                       help="stratified validation fraction when the source has no split")
    probe.add_argument("--probe-timeout", type=float, default=120.0, help="seconds before a probe is killed")
    probe.add_argument("--normalize-short-side", type=int, default=None,
                       help="re-encode videos to this short side (e.g. 256) while preparing")
    probe.add_argument("--normalize-gop", type=int, default=None, help="GOP for re-encoded videos (e.g. 16)")
    probe.add_argument("--decoder", choices=["auto", "decord", "pyav"], default="auto",
                       help="decode backend for the probe (recorded per video in the manifest): auto = decord, "
                            "PyAV for files decord cannot decode (AV1, ...)")
    probe.add_argument("--accept-partial", action="store_true",
                       help="accept damaged videos (corrupt, truncated) with only the frames that decode cleanly "
                            "before the damage (the manifest's damaged column names the damage) instead of "
                            "quarantining them")
    s = src.add_parser("folder", parents=[probe], help="root/<class>/<video> (UCF101, HMDB51, Kinetics downloader)")
    s.add_argument("root")
    s = src.add_parser("kinetics", parents=[probe], help="Kinetics CSV annotations + a directory of clips")
    s.add_argument("annotations", help="CSV with label,youtube_id,time_start,time_end,split")
    s.add_argument("videos", help="directory of <youtube_id>_<start:06d>_<end:06d>.mp4 (optionally in class folders)")
    s = src.add_parser("ucf101", parents=[probe], help="UCF101 split files + video root")
    s.add_argument("splits", help="directory with classInd.txt, trainlistNN.txt, testlistNN.txt")
    s.add_argument("videos", help="UCF-101 video root (<class>/<video>.avi)")
    s.add_argument("--split-number", type=int, default=1, choices=[1, 2, 3])
    s = src.add_parser("table", parents=[probe], help="a CSV or Parquet of path,label[,split]")
    s.add_argument("table")
    s = src.add_parser("synthetic", parents=[common], help="write the temporal-order synthetic task (H.264 MP4)")
    s.add_argument("--classes", type=int, default=4)
    s.add_argument("--videos-per-class", type=int, default=40)
    s.add_argument("--size", type=_size, default=(128, 128), help="WIDTHxHEIGHT")
    s.add_argument("--frames", type=int, default=32)
    s.add_argument("--fps", type=int, default=16)
    s = src.add_parser("shards", parents=[common], help="convert a manifest's videos into JPEG frame shards")
    s.add_argument("--manifest", required=True)
    s.add_argument("--short-side", type=int, default=256)
    s.add_argument("--fps", type=float, default=None, help="keep frames at this rate (default: all frames)")
    s.add_argument("--quality", type=int, default=90, help="JPEG quality")
    s.add_argument("--max-shard-mb", type=int, default=512)
    s.add_argument("--format", choices=["arrow", "parquet"], default="arrow",
                   help="arrow: memory-mapped IPC, one record batch per video (fastest); parquet: one row group per video")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train ECO with Ray Train")
    p.add_argument("--config", required=True, help="YAML recipe (jobs/configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="a Ray Tune sweep of Ray Train runs of a recipe, ASHA early stopping")
    p.add_argument("--config", required=True, help="YAML recipe every trial starts from (jobs/configs/*.yaml)")
    p.add_argument("--space", required=True,
                   help="SPACE.yaml: searched keys, metric, trials, concurrency, scheduler")
    p.add_argument("--name", default=None,
                   help="sweep name (default: the space file's name); submitting the same name again resumes it")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the recipe (for every trial)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a manifest")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=1, help="temporal clips per video (offsets shifted)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 3], help="spatial crops per clip")
    p.add_argument("--out", default=None, help="report directory (default: next to the checkpoint)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for an auto-started local Ray")
    p.add_argument("--actors", type=int, default=None,
                   help="model actors (default: one per GPU of the cluster, else 1 CPU actor)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in the model actors (GPUs with bf16 cores)")
    p.add_argument("--decode-on", default=None, choices=["cpu", "device"],
                   help="shards: decode JPEGs in the CPU workers or on the model actors' devices (default: the "
                        "checkpoint's data.decode_on)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels for videos, batch inference, or online mode")
    p.add_argument("videos", nargs="*")
    p.add_argument("--checkpoint", required=True, help="project checkpoint dir/file or the authors' .pth.tar")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--manifest", default=None, help="batch inference over a manifest with Ray Data")
    p.add_argument("--out", default=None, help="Parquet output for --manifest; JSON/PNG directory for --online")
    p.add_argument("--features", action="store_true", help="also write the clip feature vector")
    p.add_argument("--actors", type=int, default=None, help="model actors for batch inference")
    p.add_argument("--online", action="store_true", help="stream frames and predict every --every frames")
    p.add_argument("--every", type=int, default=8)
    p.add_argument("--memory", type=int, default=None, help="working-memory frames (default: the model's segments)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a checkpoint's model as TorchScript or ONNX (labels and "
                                      "preprocessing inside the file)")
    p.add_argument("--checkpoint", required=True, help="project checkpoint dir/file or the authors' .pth.tar")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--out", default=None, help="output file (default: outputs/export/eco.pt or eco.onnx)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve a checkpoint (or an exported model) over HTTP with Ray Serve")
    from pipeline.serving.settings import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="benchmarks; each prints ratios against a baseline measured in the same run")
    p.add_argument("name", choices=["decode", "shards", "device_decode", "pipeline", "train", "steps", "gpu",
                                    "elastic", "serve"])
    p.add_argument("--out", default=None, help="write results (JSON, plots) here")
    p.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("check", help="end-to-end checks of a machine: `eco check gpu` (make gpu-check)")
    p.add_argument("what", choices=["gpu"])
    from pipeline.bench.check_gpu import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="synthetic data -> 2-worker Ray Train run -> evaluation (make demo)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--videos-per-class", type=int, default=None, metavar="N",
                   help="size of the synthetic dataset (default 60 per class, 3/4 for training: what the 90%% "
                        "target is measured on); fewer for a quicker look at the whole path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the demo recipe (jobs/configs/synthetic_demo.yaml), e.g. train.epochs=5")
    p.set_defaults(func=cmd_demo)
    return parser


# Path arguments per subcommand: inside a Ray job a relative one would land in Ray's temporary copy of the working
# directory (pipeline.raystart.check_job_paths); refused before any work starts. `eco train` checks its config.
_PATH_ARGS = {"prepare": ("out", "root", "annotations", "videos", "splits", "table", "manifest"),
              "evaluate": ("checkpoint", "manifest", "out"),
              "predict": ("checkpoint", "manifest", "out"),
              "export": ("checkpoint", "out")}


def _check_job_paths(args: argparse.Namespace) -> None:
    from pipeline import raystart

    names = _PATH_ARGS.get(args.command, ())
    raystart.check_job_paths({f"--{n}" if n in ("out", "checkpoint", "manifest") else n: getattr(args, n, None)
                              for n in names})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        _check_job_paths(args)
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # User errors (bad config key, missing file, bad manifest): one clear line, no traceback.
        if args.verbose:
            raise
        print(f"eco {args.command}: error: {e}", file=sys.stderr)
        return 2


def run_subcommand(command: str, argv: list[str]) -> int:
    """`python jobs/<command>.py ARGS` == `eco <command> ARGS`: the thin `ray job submit` entrypoints call this.
    A `-v` anywhere in ARGS belongs to the top-level parser."""
    verbose = [a for a in argv if a in ("-v", "--verbose")]
    return main([*verbose, command, *(a for a in argv if a not in verbose)])


if __name__ == "__main__":
    sys.exit(main())
