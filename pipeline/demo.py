"""`make demo` / `eco demo`: synthetic temporal task -> 2-worker Ray Train run on CPU -> evaluation.

`run_demo` prints its progress and result: the accuracy, the wall time, where the checkpoint and the W&B offline
run are, and the `wandb sync` command. Target: >= 90 % validation top-1 on 4 classes within 15 minutes
on a 2-core machine. The recipe is jobs/configs/synthetic_demo.yaml.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from pipeline import raystart

log = logging.getLogger(__name__)

RECIPE = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "synthetic_demo.yaml"
TARGET_TOP1 = 0.90
# The synthetic task (pipeline.data.synthetic): 4 directions of motion; 60 videos per class -> 180 train, 60 val.
CLASSES = 4
VIDEOS_PER_CLASS = 60
VIDEO_SIZE = (128, 128)
VIDEO_FRAMES = 32


def run_demo(out_dir: str | os.PathLike = "outputs/demo", *, shuffle_frames: bool = False,
             overrides: list[str] | None = None, videos_per_class: int | None = None) -> int:
    """Run the demo end to end and print the figures; returns 0 when the accuracy target is met, else 1.

    `shuffle_frames=True` runs the temporal control (frames shuffled in time; expect chance, docs/temporal_control.md).
    """
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    from pipeline.config import load_config
    from pipeline.data.synthetic import make_synthetic
    from pipeline.training.evaluate import evaluate
    from pipeline.training.run import train

    per_class = videos_per_class or VIDEOS_PER_CLASS
    if per_class < 4:
        raise ValueError(f"videos_per_class={per_class}: expected at least 4 (each class needs training and "
                         f"validation videos)")
    started = time.perf_counter()
    out = Path(out_dir).absolute()
    data = out / "data"
    # Our own local instance, with more logical CPUs than this machine's 2 cores: 2 training workers plus the
    # decode actors (Ray schedules by logical CPUs; the work itself shares the cores).
    raystart.ensure_ray(num_cpus=4)

    existing = _existing_videos(data)
    if existing == CLASSES * per_class:
        print(f"[demo] reusing the synthetic dataset in {data}")
    else:
        if existing is not None:  # an earlier demo's dataset of another size: its videos would join the new ones
            shutil.rmtree(data / "videos", ignore_errors=True)
        print(f"[demo] writing the synthetic temporal task ({CLASSES} classes x {per_class} videos) to {data}")
        make_synthetic(data, classes=CLASSES, videos_per_class=per_class, size=VIDEO_SIZE,
                       frames=VIDEO_FRAMES, seed=0)
    t_data = time.perf_counter() - started

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{'shuffled' if shuffle_frames else 'demo'}-{stamp}"
    cfg = load_config(RECIPE, [f"data.manifest={data}", f"checkpoint.storage_path={out / 'runs'}",
                               f"checkpoint.run_name={name}", f"data.shuffle_frames={str(shuffle_frames).lower()}",
                               *(overrides or [])])
    print(f"[demo] training ECO-{cfg.model.variant.capitalize()} ({cfg.model.num_segments} segments, "
          f"{cfg.data.crop_size} px) with {cfg.scaling.num_workers} Ray Train workers on CPU for "
          f"{cfg.train.epochs} epochs")
    result = train(cfg)
    t_train = time.perf_counter() - started - t_data

    checkpoint = result.best_checkpoint or result.latest_checkpoint
    print(f"[demo] evaluating {checkpoint}")
    report = evaluate(checkpoint, data, split=cfg.data.val_split, num_clips=1, crops=1, out_dir=out / "eval" / name)
    wall = time.perf_counter() - started

    met = report["top1"] >= TARGET_TOP1
    print()
    print(result.describe())
    print(f"[demo] validation: top-1 {report['top1']:.1%}  top-5 {report['top5']:.1%}  "
          f"mean class accuracy {report['mean_class_acc']:.1%}  on {report['videos']} videos, "
          f"{len(report['per_class'])} classes (chance {1 / len(report['per_class']):.0%})")
    print(f"[demo] wall time {wall / 60:.1f} min (data {t_data:.0f}s, training {t_train:.0f}s, "
          f"evaluation {wall - t_data - t_train:.0f}s)")
    # The run's checkpoint, W&B run and its `wandb sync` command are in result.describe() above.
    print(f"[demo] evaluation report {report['out_dir']}  (report.json, predictions.parquet, confusion.png)")
    if shuffle_frames:
        print("[demo] temporal control: frames were shuffled in time; accuracy near chance is the expected result")
        return 0
    print(f"[demo] target: top-1 >= {TARGET_TOP1:.0%} within 15 min -> "
          f"{'MET' if met and wall <= 15 * 60 else 'NOT MET'}")
    return 0 if met else 1


def _existing_videos(data: Path) -> int | None:
    """How many videos an earlier demo prepared in `data` (None when there is no complete dataset there)."""
    try:
        if not (data / "manifest.parquet").is_file():
            return None
        return int(json.loads((data / "summary.json").read_text())["accepted"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
