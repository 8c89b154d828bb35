"""`eco check gpu` / `make gpu-check`: the GPU path end to end on one GPU, in a few minutes, with one summary table.

Each check runs the project's own functions, not a re-implementation:
  train        ECO-Lite on the synthetic direction-of-motion task (clips rendered in memory), a few epochs through
               `engine.train_one_epoch` with bf16 autocast + channels_last(_3d) + torch.compile: clips/s, MFU,
               data wait, final loss
  evaluate     `engine.evaluate_batches` on held-out clips with W&B-style sample keeping on (the host copies of
               device tensors): top-1
  checkpoint   the project checkpoint format written and read back, `Predictor` on the GPU: predictions agree
  jpeg         JPEG frames (a shard's encoding) decoded on the GPU (nvJPEG) against the CPU decoder
  device decode  data.decode_on=device's trainer side (`jpeg_clips.decode_clips`): JPEG clips decoded + augmented
               on the device (clips/s, and the difference to the host path's clips), then training steps of the
               trained model fed by device decoding against host decoding (clips/s of the whole step)
  bench gpu    `eco bench gpu --quick`: fp32 / bf16 + channels_last / + compile training clips/s and MFU
  ray          where Ray, decord and PyAV are installed: a tiny dataset on disk, `eco evaluate` with GPU model
               actors and batch inference (`eco predict --manifest`); skipped (and said) where they are not

The GPU-only part needs nothing but torch, torchvision and numpy (the lent GPU machines have no Ray), so the
training and evaluation steps are fed by plain lists of batches: the same functions Ray Train's workers call.
Without CUDA it says so and exits 0; `--device cpu` runs every check on the CPU at a tiny size (what the CPU test
suite does, to keep this code path working). Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class CheckSettings:
    """Sizes of the check: GPU defaults fit in a few minutes on one GPU; `tiny()` is the CPU variant."""

    segments: int = 8
    size: int = 112
    classes: int = 4
    train_clips: int = 256
    val_clips: int = 64
    batch: int = 16
    epochs: int = 3
    lr: float = 0.02
    compile: bool = True
    compile_backend: str = "inductor"
    amp: bool = True  # bf16 autocast
    bench: bool = True

    @classmethod
    def tiny(cls) -> "CheckSettings":
        # No compilation: tracing ECO costs minutes on a 2-core CPU. fp32: bf16 autocast is ~4.5x slower on CPUs
        # without avx512_bf16/AMX (2 of this check's 5 minutes on the test machine). Compiled and bf16 training
        # through the same step function are tested on their own (tests/test_engine.py, tests/test_train_device.py).
        return cls(segments=4, size=64, classes=4, train_clips=12, val_clips=8, batch=4, epochs=2, compile=False,
                   amp=False, bench=False)


@dataclass
class Check:
    name: str
    status: str = "ok"  # ok | failed | skipped
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _render(n: int, s: CheckSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic clips (n, T, size, size, 3) uint8 and their labels: T frames spread over 32 rendered frames."""
    from pipeline.data.synthetic import render_clip

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % s.classes
    rng.shuffle(labels)
    frames = np.linspace(0, 31, s.segments).round().astype(int)
    clips = np.stack([render_clip(int(y), rng, size=(s.size, s.size), frames=32)[0][frames] for y in labels])
    return clips, labels.astype(np.int64)


def _batches(clips: np.ndarray, labels: np.ndarray, batch: int, pin: bool) -> list[dict[str, Any]]:
    import torch

    out = []
    for i in range(0, len(clips), batch):
        clip = torch.from_numpy(clips[i:i + batch])
        out.append({"clip": clip.pin_memory() if pin else clip, "label": torch.from_numpy(labels[i:i + batch])})
    return out


def run_checks(device_name: str, s: CheckSettings, *, with_ray: bool = True) -> list[Check]:
    import torch

    from pipeline.config import OptimConfig
    from pipeline.model import eco_lite
    from pipeline.model.info import model_info
    from pipeline.training import engine
    from pipeline.training.optim import make_schedule

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    checks: list[Check] = []
    state: dict[str, Any] = {}

    def attempt(name: str, fn: Callable[[Check], None]) -> None:
        check = Check(name)
        t0 = time.perf_counter()
        try:
            fn(check)
        except Exception as e:  # noqa: BLE001 - every check reports; the exit status says something failed
            check.status, check.note = "failed", f"{type(e).__name__}: {e}"
            traceback.print_exc()
        check.figures.setdefault("seconds", round(time.perf_counter() - t0, 1))
        checks.append(check)
        print(f"[gpu-check] {name}: {check.status}  {_figures(check)}", flush=True)

    train_clips, train_labels = _render(s.train_clips, s, seed=0)
    val_clips, val_labels = _render(s.val_clips, s, seed=1)

    def train(check: Check) -> None:
        torch.manual_seed(0)
        model = eco_lite(num_classes=s.classes, num_segments=s.segments, dropout=0.3)
        model = engine.prepare_model(model, device, channels_last=True, compile=s.compile,
                                     compile_backend=s.compile_backend, bn_policy="train")
        steps_per_epoch = math.ceil(s.train_clips / s.batch)
        schedule = make_schedule(OptimConfig(lr=s.lr, schedule="cosine", warmup_epochs=0.5), peak_lr=s.lr,
                                 steps_per_epoch=steps_per_epoch, epochs=s.epochs)
        from pipeline.training.optim import build_optimizer

        optimizer = build_optimizer(model, OptimConfig(lr=s.lr), lr=s.lr)
        settings = engine.StepSettings(normalization="imagenet", amp=s.amp, clip_grad_norm=40.0,
                                       log_every_steps=steps_per_epoch)
        batches = _batches(train_clips, train_labels, s.batch, pin=cuda)
        step, losses, last = 0, [], None
        for epoch in range(s.epochs):
            logged: list[dict] = []
            last = engine.train_one_epoch(model, optimizer, batches, schedule=schedule, step=step, device=device,
                                          settings=settings, num_classes=s.classes, on_log=logged.append)
            step = last.step
            losses.append(logged[-1]["train/loss"] if logged else float("nan"))
        gmacs = model_info("lite", num_segments=s.segments, size=s.size, num_classes=s.classes)["gmacs"]
        clips_per_s = last.clips / max(last.wait_s + last.compute_s, 1e-9)  # the last epoch: compiled already
        wait = last.wait_s / max(last.wait_s + last.compute_s, 1e-9)
        check.figures.update({"clips/s": float(f"{clips_per_s:.3g}"), "data wait": f"{wait:.1%}",
                              "loss": f"{losses[0]:.3f} -> {losses[-1]:.3f}"})
        if cuda:
            from pipeline.bench.gpu import _peak

            peak = _peak(torch.cuda.get_device_name(device), "bf16", None)
            if peak:
                check.figures["MFU"] = f"{clips_per_s * 3 * 2 * gmacs * 1e9 / peak:.1%}"
        if not all(math.isfinite(v) for v in losses):
            raise RuntimeError(f"non-finite training loss: {losses}")
        state["model"], state["optimizer"], state["step"] = model, optimizer, step

    def evaluate(check: Check) -> None:
        model = state["model"]
        sums, samples = engine.evaluate_batches(model, _batches(val_clips, val_labels, s.batch, pin=cuda),
                                                device=device, normalization="imagenet", amp=s.amp,
                                                num_classes=s.classes, keep_samples=4)
        m = sums.compute()
        if samples.clips is None or samples.clips.shape[0] != min(4, s.val_clips):
            raise RuntimeError("sample clips were not kept")
        check.figures.update({"top-1": f"{m['top1']:.1%}", "videos": int(m["count"])})
        state["val_top1"] = m["top1"]

    def checkpoint(check: Check) -> None:
        from pipeline.config import Config
        from pipeline.inference.predictor import Predictor
        from pipeline.training import checkpoint as ckpt

        cfg = Config().replace({"model.num_segments": s.segments, "data.short_side": s.size,
                                "data.crop_size": min(s.size, 224), "data.normalization": "imagenet"})
        with tempfile.TemporaryDirectory(prefix="eco-gpu-check-") as tmp:
            saved = ckpt.save_checkpoint(Path(tmp, "epoch_0001"), ckpt.build_state(
                state["model"], state["optimizer"], epoch=s.epochs, step=state["step"], config=cfg.to_dict(),
                label_names=[f"class_{i}" for i in range(s.classes)], data_seed=0, metrics={}))
            predictor = Predictor.from_checkpoint(saved, device=device, amp=s.amp)
        probs, _ = predictor.predict_clips(val_clips)
        # The trained (compiled) model on the same clips, in the evaluation's batch size: a new batch size would
        # make torch.compile trace the model again.
        model = state["model"].eval()
        with torch.no_grad(), engine.autocast(device, s.amp):
            reference = np.concatenate([model(_normalized(val_clips[i:i + s.batch], device)).float().argmax(1)
                                        .cpu().numpy() for i in range(0, len(val_clips), s.batch)])
        agree = float((probs.argmax(1) == reference).mean())
        check.figures.update({"predict agrees": f"{agree:.1%}"})
        if agree < 0.95:
            raise RuntimeError(f"the reloaded checkpoint predicts differently on {1 - agree:.1%} of the clips")

    def jpeg(check: Check) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

        frames = torch.from_numpy(val_clips[0]).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
        blobs = [encode_jpeg(f, quality=90) for f in frames]
        on_host = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB))
        on_device = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device))
        diff = (on_device.cpu().int() - on_host.int()).abs().float()
        check.figures.update({"frames": len(blobs), "mean |gpu - cpu|": round(float(diff.mean()), 3)})
        if float(diff.mean()) > 2.0:
            raise RuntimeError(f"GPU JPEG decoding differs from the CPU decoder by {float(diff.mean()):.2f} on average")

    def device_decode(check: Check) -> None:
        check.figures.update(measure_device_decode(device, s, state["model"]))

    def bench(check: Check) -> None:
        from pipeline.bench.gpu import measure

        res = measure(quick=True)
        for r in res["settings"]:
            if "error" in r:
                raise RuntimeError(f"{r['setting']}: {r['error']}")
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
            check.figures[r["setting"]] = f"{r['clips_per_s']:.1f} clips/s (MFU {mfu})"
        state["bench"] = res

    def ray_path(check: Check) -> None:
        missing = [m for m in ("ray", "decord", "av") if importlib.util.find_spec(m) is None]
        if missing:
            check.status, check.note = "skipped", f"not installed here: {', '.join(missing)}"
            return
        _ray_checks(check, s, state)

    attempt("train", train)
    if "model" in state:
        attempt("evaluate", evaluate)
        attempt("checkpoint + predict", checkpoint)
    attempt("jpeg decode", jpeg)
    if "model" in state:
        attempt("device decode", device_decode)
    if s.bench and cuda:
        attempt("bench gpu", bench)
    if with_ray:
        attempt("ray: evaluate + batch inference", ray_path)
    return checks


def jpeg_batches(s: CheckSettings, *, seed: int = 2) -> list[dict[str, Any]]:
    """Batches as `data.decode_on=device` ships them: synthetic clips rendered at a shard's short side (the crop
    size x 256/224, as shards at 256 feed 224 crops), each frame JPEG-encoded at q90, plus training draws."""
    import dataclasses

    import torch
    from torchvision.io import encode_jpeg

    from pipeline.data import transforms
    from pipeline.data.jpeg_clips import pack

    short = round(s.size * 256 / 224)
    clips, labels = _render(s.train_clips, dataclasses.replace(s, size=short), seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for clip in clips:
        frames = torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
        blob, offsets = pack([encode_jpeg(f, quality=90).numpy().tobytes() for f in frames])
        rows.append((blob, offsets, transforms.draw_train(rng).as_array()))
    out = []
    for i in range(0, len(rows), s.batch):
        part = rows[i:i + s.batch]
        out.append({"jpeg": np.asarray([r[0] for r in part], dtype=object),
                    "jpeg_offsets": np.stack([r[1] for r in part]), "augment": np.stack([r[2] for r in part]),
                    "label": torch.from_numpy(labels[i:i + len(part)])})
    return out


def measure_device_decode(device_name: str, s: CheckSettings, model) -> dict[str, Any]:
    """The trainer side of `data.decode_on=device` on `device_name`: decoded + augmented clips/s on the device, the
    mean |device - host| of its clips (nvJPEG and the float resize against libjpeg-turbo and the uint8 resize:
    0 on a CPU device), and clips/s of whole training steps of `model` fed by device decoding vs host decoding
    (the host path decodes on this process's CPU threads, then copies the clips to the device)."""
    import torch

    from pipeline.config import OptimConfig
    from pipeline.data.jpeg_clips import ClipFinish, decode_clips
    from pipeline.training import engine
    from pipeline.training.optim import build_optimizer, make_schedule

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    finish = ClipFinish(train=True, crop_size=s.size, short_side=round(s.size * 256 / 224))
    batches = jpeg_batches(s)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    decode_clips(batches[0], finish, device=device)  # warm-up (nvJPEG handles, allocator)
    sync()
    t0 = time.perf_counter()
    clips = 0
    for b in batches:
        clips += decode_clips(b, finish, device=device).shape[0]
    sync()
    decode_rate = clips / max(time.perf_counter() - t0, 1e-9)
    on_device = decode_clips(batches[0], finish, device=device).cpu()
    on_host = decode_clips(batches[0], finish, device="cpu")
    diff = float((on_device.int() - on_host.int()).abs().float().mean())

    def step_rate(decode_device) -> float:
        def feed():
            for b in batches:
                clip = decode_clips(b, finish, device=decode_device)
                yield {"clip": clip.pin_memory() if cuda and decode_device == "cpu" else clip, "label": b["label"]}

        optimizer = build_optimizer(model, OptimConfig(lr=s.lr), lr=s.lr)
        schedule = make_schedule(OptimConfig(lr=s.lr, schedule="constant"), peak_lr=s.lr,
                                 steps_per_epoch=len(batches), epochs=1)
        settings = engine.StepSettings(normalization="imagenet", amp=s.amp, clip_grad_norm=40.0,
                                       log_every_steps=len(batches))
        result = engine.train_one_epoch(model, optimizer, feed(), schedule=schedule, step=0, device=device,
                                        settings=settings, num_classes=s.classes)
        return result.clips / max(result.wait_s + result.compute_s, 1e-9)

    if cuda:
        step_rate(device)  # warm-up: cuDNN's algorithm search and the allocator's first pass are not a steady state
    # Alternating rounds, best of each, on a GPU: neither path gains from running second (clocks, caches).
    rounds = [(step_rate(device), step_rate("cpu")) for _ in range(2 if cuda else 1)]
    device_steps, host_steps = max(r[0] for r in rounds), max(r[1] for r in rounds)
    figures = {"decoded+augmented clips/s": float(f"{decode_rate:.3g}"), "mean |device - host|": round(diff, 3),
               "step clips/s, device decode": float(f"{device_steps:.3g}"),
               "step clips/s, host decode": float(f"{host_steps:.3g}")}
    if cuda:
        figures["device / host"] = round(device_steps / max(host_steps, 1e-9), 2)
    else:
        # Both paths are the same CPU work on a CPU device: the figures exercise the code, their ratio is noise.
        figures["note"] = "cpu device: both paths decode on the CPU, no GPU figure"
    # 0 on a CPU device (the same decoder and resize); on CUDA nvJPEG and the float resize round differently.
    if diff > 2.0:
        raise RuntimeError(f"device-decoded clips differ from host-decoded ones by {diff:.2f} grey levels on average")
    return figures


def _normalized(clips: np.ndarray, device):
    import torch

    from pipeline.data.transforms import normalize

    return normalize(torch.from_numpy(clips).to(device), "imagenet")


def _ray_checks(check: Check, s: CheckSettings, state: dict[str, Any]) -> None:
    """A tiny dataset on disk, a checkpoint of the trained model, `evaluate` on Ray Data model actors (GPU ones
    when the cluster has GPUs) and batch inference."""
    import ray

    from pipeline import raystart
    from pipeline.config import Config
    from pipeline.data.manifest import read_labels
    from pipeline.data.synthetic import make_synthetic
    from pipeline.inference.batch import batch_predict
    from pipeline.training import checkpoint as ckpt
    from pipeline.training.evaluate import evaluate

    started = not ray.is_initialized()
    # Before the dataset: preparing it starts Ray too (with the machine's core count), and batch inference needs a
    # model actor, a decode actor and the read/write tasks at once.
    raystart.ensure_ray(num_cpus=4)  # the project's one start-up policy: joins a running cluster if any
    with tempfile.TemporaryDirectory(prefix="eco-gpu-check-") as tmp:
        data = Path(tmp, "data")
        make_synthetic(data, classes=s.classes, videos_per_class=4, size=(s.size, s.size), frames=32, seed=0)
        names = read_labels(data)
        cfg = Config().replace({"model.num_segments": s.segments, "data.short_side": s.size,
                                "data.crop_size": min(s.size, 224), "data.normalization": "imagenet",
                                "data.decode_workers": 1, "train.eval_batch_size": s.batch})
        saved = ckpt.save_checkpoint(Path(tmp, "run", "epoch_0001"), ckpt.build_state(
            state["model"], None, epoch=s.epochs, step=state.get("step", 0), config=cfg.to_dict(),
            label_names=list(names), data_seed=0, metrics={}))
        try:
            report = evaluate(saved, data, num_clips=2, crops=3, out_dir=Path(tmp, "eval"), amp=s.amp)
            summary = batch_predict(data, saved, Path(tmp, "predictions"))
        finally:
            if started:
                ray.shutdown()
    if report["incomplete_videos"] or report["views"] != 6 * report["videos"]:
        raise RuntimeError(f"evaluation aggregated {report['views']} views for {report['videos']} videos, not 6 each")
    check.figures.update({"eval top-1": f"{report['top1']:.1%}", "views": report["views"],
                          "model actors": report["model_actors"], "batch predicted": summary.predicted})


def _figures(check: Check) -> str:
    parts = [f"{k} {v}" for k, v in check.figures.items()]
    return ", ".join(parts) + (f"  ({check.note})" if check.note else "")


def format_table(checks: list[Check], device: str) -> str:
    lines = [f"GPU check on {device}", f"  {'check':34s} {'status':8s} figures"]
    for c in checks:
        lines.append(f"  {c.name:34s} {c.status:8s} {_figures(c)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print(f"eco check gpu: no CUDA device on this machine (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}): nothing to check. Run it on a GPU node; `--device cpu` runs the "
              f"same checks on the CPU at a tiny size.")
        return 0
    settings = CheckSettings.tiny() if device == "cpu" or args.tiny else CheckSettings()
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    checks = run_checks(device, settings, with_ray=not args.no_ray)
    print(format_table(checks, f"{name} (torch {torch.__version__}), {time.perf_counter() - t0:.0f} s"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(
            {"device": name, "torch": torch.__version__, "settings": settings.__dict__,
             "checks": [c.__dict__ for c in checks]}, indent=2, default=str))
        print(f"results: {out / 'gpu_check.json'}")
    failed = [c.name for c in checks if c.status == "failed"]
    if failed:
        print(f"eco check gpu: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present, else nothing)")
    p.add_argument("--tiny", action="store_true", help="the tiny sizes of the CPU variant, on any device")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray evaluation / batch inference check")
    p.add_argument("--out", default=None, help="write gpu_check.json here")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.check_gpu", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
