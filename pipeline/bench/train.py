"""`eco bench train`: training on CPU through Ray Train + Ray Data vs a plain PyTorch loop on in-memory tensors.

Both sides run the same training step (`pipeline.training.engine`: the same ECO-Lite, segments, input size, batch,
optimiser, gradient clipping, precision, memory format and torch threads: the plain loop takes the thread count
the Ray Train worker reported in its checkpoint's workers.json) on small camera-like H.264 videos (throughput does
not depend on the clips' content):
- Ray Train: `pipeline.training.run.train` with 1 training worker (1 CPU) and 1 decode task at a time, i.e. the
  real job
  (Ray Data decode + transform, streaming split, DDP-ready loop, per-epoch checkpoint). Throughput is the loop's
  own `clips_per_s` of the last epoch: clips / (time waiting for data + step time), so it includes every cost of
  getting batches from Ray Data but not the run's start-up, evaluation or checkpointing (reported separately as
  the epoch wall time).
- Plain loop: the same number of steps over uint8 clips already in memory (decoded once, outside the timing), in a
  fresh process with the worker's thread environment (not in the driver, which holds Ray, W&B and Arrow),
  normalised and stepped exactly like the training loop; run before and after the Ray run, the mean is the
  baseline (a shared machine's load drifts).
Overhead = plain clips/s / Ray Train clips/s - 1 (target <= 10%).

Why it can hold on a small machine: the model step dominates (ECO's 2D trunk + 3D net are tens of GFLOPs per
clip even at this size) while decoding a small clip costs milliseconds, and the decode task runs on another core.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.bench._common import bar_plot, write_results

log = logging.getLogger(__name__)

TARGET_OVERHEAD = 0.10


def _config(manifest: str, out: Path, *, segments: int, size: int, batch: int, epochs: int):
    from pipeline.config import Config

    return Config().replace({
        "data.manifest": manifest, "data.short_side": size, "data.crop_size": size,
        "data.horizontal_flip": False, "data.decode_workers": 1, "data.decode_cpus": 1.0,
        "data.decode_batch_size": batch, "data.prefetch_batches": 2,
        "model.num_segments": segments, "model.dropout": 0.0,
        "train.epochs": epochs, "train.batch_size": batch, "train.eval_every_epochs": epochs, "train.seed": 0,
        "train.log_every_steps": 1,
        # The CPU recipe's step (jobs/configs/synthetic_demo.yaml): fp32, default memory format.
        "train.amp": False, "train.channels_last": False,
        "scaling.num_workers": 1, "scaling.cpus_per_worker": 1.0, "scaling.use_gpu": False,
        "scaling.local_num_cpus": 3,
        "checkpoint.storage_path": str(out / "runs"), "checkpoint.run_name": f"bench-{int(time.time())}",
        # W&B offline with a per-step log: the steady-state rate (without each epoch's pipeline start-up) is read
        # back from the run's train/clips_per_s_rank0 history.
        "checkpoint.max_failures": 0, "wandb.enabled": True, "wandb.mode": "offline",
        "wandb.dir": str(out / "wandb"), "wandb.log_sample_clips": 0,
        "optim.lr": 0.01, "optim.warmup_epochs": 0.0,
    })


def _plain_loop(cfg, num_classes: int, steps: int, threads: int) -> dict[str, float]:
    """The training loop's steps (engine.train_one_epoch, the same settings as the worker's) on in-memory uint8
    clips (decoded once, before the clock starts), with `threads` torch threads."""
    import numpy as np
    import torch

    from pipeline.data import sampling, transforms
    from pipeline.data.decode import decode_frames
    from pipeline.data.manifest import read_manifest
    from pipeline.model import BUILDERS
    from pipeline.training import engine
    from pipeline.training.optim import Schedule, build_optimizer

    torch.set_num_threads(threads)
    table = read_manifest(cfg.data.manifest, cfg.data.train_split)
    rows = table.to_pylist()
    clips, labels = [], []
    for i in range(steps * cfg.train.batch_size):
        row = rows[i % len(rows)]
        rng = sampling.clip_rng(0, 0, row["video_id"])
        frames = decode_frames(row["path"], sampling.train_indices(row["num_frames"], cfg.model.num_segments, rng),
                               short_side=cfg.data.short_side, num_frames=row["num_frames"])
        clips.append(transforms.train_transform(frames, crop_size=cfg.data.crop_size, rng=rng, flip=False))
        labels.append(row["label"])
    data = torch.from_numpy(np.stack(clips))  # uint8 (S*B, T, H, W, 3)
    target = torch.tensor(labels, dtype=torch.int64)
    b, t, cpu = cfg.train.batch_size, cfg.train, torch.device("cpu")
    batches = [{"clip": data[k * b:(k + 1) * b], "label": target[k * b:(k + 1) * b]} for k in range(steps)]

    torch.manual_seed(t.seed)
    m = cfg.model
    model = BUILDERS[m.variant](num_classes=num_classes, num_segments=m.num_segments, dropout=m.dropout)
    model = engine.prepare_model(model, cpu, channels_last=t.channels_last, compile=t.compile,
                                 compile_backend=t.compile_backend, bn_policy=t.batchnorm)
    optimizer = build_optimizer(model, cfg.optim, lr=cfg.optim.lr)
    schedule = Schedule(peak_lr=cfg.optim.lr, total_steps=10**9, steps_per_epoch=steps, kind="constant")
    settings = engine.StepSettings(normalization=cfg.data.normalization, grad_accum_steps=t.grad_accum_steps,
                                   clip_grad_norm=cfg.optim.clip_grad_norm, amp=t.amp, bn_policy=t.batchnorm,
                                   log_every_steps=10**9)

    def epoch(items) -> None:
        engine.train_one_epoch(model, optimizer, items, schedule=schedule, step=0, device=cpu, settings=settings,
                               num_classes=num_classes)

    epoch(batches[:1])  # warm-up (allocator, first-call paths), as the Ray side's first epoch is
    t0 = time.perf_counter()
    epoch(batches)
    elapsed = time.perf_counter() - t0
    return {"clips": steps * b, "seconds": elapsed, "clips_per_s": steps * b / elapsed, "threads": threads}


def _plain_loop_in_child(cfg, num_classes: int, steps: int, threads: int) -> dict[str, float]:
    """`_plain_loop` in a fresh process with a Ray worker's thread environment (OMP/MKL threads = `threads`), as
    the training worker runs: the driver has imported Ray, W&B and Arrow and holds their objects, and its Python
    heap (what every garbage collection walks) and OpenMP settings are not the worker's."""
    import multiprocessing
    from unittest import mock

    # Read by the child's OpenMP runtime when torch loads; the driver's environment is restored afterwards.
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}), \
            multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_plain_loop, (cfg, num_classes, steps, threads))


def _worker_threads(checkpoint: str | None) -> int:
    """The torch threads the Ray Train worker trained with (its checkpoint's workers.json), else 1."""
    import json

    try:
        workers = json.loads(Path(checkpoint, "workers.json").read_text())
        return int(workers[0].get("torch_threads", 1))
    except (TypeError, OSError, ValueError, KeyError, IndexError):
        return 1


def _steady_clips_per_s(wandb_runs: list[str], *, steps_per_epoch: int, batch: int) -> float:
    """Clips/s of the last epoch's steps except its first (which waits for the epoch's first decoded batch),
    from the per-step `train/clips_per_s_rank0` (wall time of each step, data wait included) the run logged."""
    from pipeline.training.tracking import read_rows

    rows = [r for folder in wandb_runs for r in read_rows(folder)]
    rates = {int(r["train/step"]): float(r["train/clips_per_s_rank0"]) for r in rows
             if "train/step" in r and "train/clips_per_s_rank0" in r}
    last = max(rates, default=0)
    first_of_last_epoch = last - steps_per_epoch + 1
    steps = [k for k in rates if first_of_last_epoch < k <= last and rates[k] > 0]
    if not steps:
        return float("nan")
    return batch * len(steps) / sum(batch / rates[k] for k in steps)


def measure(work_dir: str | Path | None = None, *, quick: bool = False,
            train_videos: int | None = None) -> dict[str, Any]:

    from pipeline.bench._common import make_videos
    from pipeline.data.manifest import read_labels, read_manifest
    from pipeline.training.run import train

    work = Path(work_dir or tempfile.mkdtemp(prefix="eco-bench-train-"))
    segments, size, batch = 4, 64, 4
    # Long enough epochs that each epoch's pipeline start-up (the first decoded batch) is a small share.
    train_videos = train_videos or (24 if quick else 120)
    epochs = 2
    # Throughput does not depend on what the clips show: small camera-like videos, 4 classes, 8 for validation.
    data_dir = make_videos(work / "videos", count=train_videos + 8, seconds=2.0, fps=12, size=(96, 96), gop=12,
                           classes=4, val=8)
    cfg = _config(str(data_dir), work, segments=segments, size=size, batch=batch, epochs=epochs)
    num_train = read_manifest(cfg.data.manifest, cfg.data.train_split).num_rows
    steps = num_train // batch  # Ray side: ceil(num_train / batch) steps, the last one possibly short

    num_classes = len(read_labels(cfg.data.manifest))
    # The plain loop runs twice after the Ray run (which tells it the worker's thread count) and the mean is the
    # baseline: on a shared machine the load drifts over minutes.
    t0 = time.perf_counter()
    result = train(cfg)
    ray_wall = time.perf_counter() - t0
    threads = _worker_threads(result.latest_checkpoint)
    before = _plain_loop_in_child(cfg, num_classes, steps, threads)
    m = result.metrics
    steady = _steady_clips_per_s(result.wandb_runs, steps_per_epoch=-(-num_train // batch), batch=batch)
    ray_side = {"clips_per_s": float(m["clips_per_s"]), "data_wait_frac": float(m["data_wait_frac"]),
                "steady_clips_per_s": steady,
                "clips": float(m["train_clips"]), "epoch_time_s": float(m["epoch_time_s"]),
                "epoch_clips_per_s": float(m["train_clips"]) / float(m["epoch_time_s"]), "run_wall_s": ray_wall}
    after = _plain_loop_in_child(cfg, num_classes, steps, threads)
    plain = {"clips": before["clips"], "seconds": (before["seconds"] + after["seconds"]) / 2,
             "clips_per_s": (before["clips_per_s"] + after["clips_per_s"]) / 2,
             "before_clips_per_s": before["clips_per_s"], "after_clips_per_s": after["clips_per_s"]}
    overhead = plain["clips_per_s"] / ray_side["clips_per_s"] - 1.0
    steady_overhead = plain["clips_per_s"] / steady - 1.0 if steady else float("nan")
    return {"setup": {"model": f"ECO-Lite {segments}F at {size}px", "batch": batch, "train_clips": num_train,
                      "epochs": epochs, "trainer_threads": threads, "decode_tasks": 1, "cpus": os.cpu_count()},
            "ray": ray_side, "plain": plain, "overhead": overhead, "steady_overhead": steady_overhead,
            "epoch_overhead": plain["clips_per_s"] / ray_side["epoch_clips_per_s"] - 1.0,
            "target_overhead": TARGET_OVERHEAD}


def format_results(res: dict[str, Any]) -> str:
    r, p = res["ray"], res["plain"]
    ok = res["overhead"] <= res["target_overhead"]
    return "\n".join([
        f"training on CPU: {res['setup']['model']}, batch {res['setup']['batch']}, "
        f"{res['setup']['trainer_threads']} trainer thread(s) on both sides, "
        f"{res['setup']['train_clips']} training clips/epoch",
        f"  plain PyTorch loop, in-memory clips   {p['clips_per_s']:7.3f} clips/s  (baseline: mean of "
        f"{p['before_clips_per_s']:.3f} and {p['after_clips_per_s']:.3f}, the same engine step)",
        f"  Ray Train + Ray Data (last epoch)     {r['clips_per_s']:7.3f} clips/s  "
        f"(data wait {r['data_wait_frac']:.1%} of step time)",
        f"  Ray Train + Ray Data (steady state)   {r['steady_clips_per_s']:7.3f} clips/s  "
        f"(last epoch without its first step, which waits for the epoch's first batch)",
        f"  overhead: {res['overhead']:+.1%} per epoch, {res['steady_overhead']:+.1%} in steady state "
        f"(target <= {res['target_overhead']:.0%}: {'met' if ok else 'NOT MET'} per epoch); "
        f"whole epoch incl. evaluation and checkpoint: {res['epoch_overhead']:+.1%}",
    ])


def run(args: argparse.Namespace) -> int:
    out = getattr(args, "out", None)
    res = measure(Path(out) / "work" if out else None, quick=bool(getattr(args, "quick", False)),
                  train_videos=getattr(args, "train_videos", None))
    print(format_results(res))
    if out:
        write_results(out, "train", res)
        bar_plot(Path(out) / "img" / "train_overhead.png",
                 ["plain PyTorch", "Ray Train + Data\n(epoch)", "Ray Train + Data\n(steady state)"],
                 [res["plain"]["clips_per_s"], res["ray"]["clips_per_s"], res["ray"]["steady_clips_per_s"]],
                 ylabel="training clips/s",
                 title=f"{res['setup']['model']} on CPU, 1 thread")
    return 0


if __name__ == "__main__":
    import sys

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--train-videos", type=int, default=None, help="training clips per epoch (default 120)")
    sys.exit(run(p.parse_args()))
