"""Shared pieces of the Ray Train tests: one tiny synthetic dataset per session and a tiny run config."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, load_config

# 4 classes x 4 videos, 64 px, 16 frames: 12 training and 4 validation videos (25 % stratified).
TINY_CLASSES = 4
TINY_VIDEOS_PER_CLASS = 4
TINY_TRAIN, TINY_VAL = 12, 4


def tiny_dataset(tmp_path_factory) -> Path:
    """The tiny synthetic dataset, written once per test session and shared by every Ray Train test module."""
    from pipeline.data.synthetic import make_synthetic

    root = tmp_path_factory.getbasetemp() / "eco_tiny_synthetic"
    if not (root / "summary.json").is_file():
        make_synthetic(root, classes=TINY_CLASSES, videos_per_class=TINY_VIDEOS_PER_CLASS, size=(64, 64), frames=16,
                       seed=0)
    return root


def tiny_config(data: Path, storage: Path, run_name: str, *overrides: str) -> Config:
    """2 workers x batch 2 at 64 px, 4 segments: 3 optimiser steps per epoch on 12 training clips."""
    return load_config(None, [
        f"data.manifest={data}",
        "model.num_segments=4", "model.dropout=0.5",
        "data.short_side=64", "data.crop_size=64", "data.normalization=unit",
        "data.multiscale_crop=false", "data.horizontal_flip=false",
        "data.decode_workers=1", "data.decode_batch_size=4", "data.prefetch_batches=1",
        "optim.lr=0.01", "optim.base_batch_size=4", "optim.schedule=cosine",
        "train.epochs=1", "train.batch_size=2", "train.eval_batch_size=4", "train.log_every_steps=1",
        "train.amp=false", "train.channels_last=false",
        "scaling.num_workers=2",
        f"checkpoint.storage_path={storage}", f"checkpoint.run_name={run_name}", "checkpoint.max_failures=0",
        "wandb.mode=offline", "wandb.log_sample_clips=2",
        *overrides,
    ])


def registered_checkpoints(run_dir: Path) -> set[str]:
    """Checkpoint directories Ray Train has registered (its snapshot is written after each upload)."""
    import json

    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return {r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}
