"""Real Ray Train V2 runs (2 CPU workers on the session's local Ray instance) on a tiny synthetic dataset:
checkpoint contents, exact metrics across ranks, the W&B offline run read back. (Resume by run name:
tests/test_train_device.py; a restart after a killed worker: tests/test_fault_tolerance.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.data.manifest import read_labels
from pipeline.model import eco_lite
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.evaluate import evaluate
from pipeline.training.run import train
from pipeline.training.tracking import run_id, wandb_dir
from tests.wandb_offline import find_offline_runs, read_offline_run
from train_helpers import TINY_CLASSES, TINY_TRAIN, TINY_VAL, tiny_config, tiny_dataset

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3  # 12 clips / 2 workers = 6 per rank, batch 2 -> 3 optimiser steps


@pytest.fixture(scope="module")
def tiny_data(ray_session, tmp_path_factory):
    return tiny_dataset(tmp_path_factory)


def _with_a_broken_val_video(data: Path, out: Path) -> tuple[Path, str]:
    """The tiny dataset's manifest plus one validation row whose file broke after it was probed (overwritten with
    bytes that are not a video, as a partial copy or a storage fault leaves it)."""
    import pyarrow as pa

    out.mkdir()
    (out / "labels.json").write_text((data / "labels.json").read_text())
    table = pq.read_table(data / "manifest.parquet")
    row = table.filter(pa.compute.equal(table.column("split"), "val")).slice(0, 1).to_pylist()[0]
    broken = out / "broken.mp4"
    broken.write_bytes(b"\x00 not a video " * 200)
    row.update(video_id="broken.mp4", path=str(broken))
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]),
                   out / "manifest.parquet")
    return out, str(broken)


def test_train_checkpoint_metrics_wandb(tiny_data, tmp_path):
    # A broken video is dropped, counted and listed in the checkpoint; every other clip is trained and scored.
    data, broken = _with_a_broken_val_video(tiny_data, tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "runs", "tiny-resume")
    first = train(cfg)

    # --- the checkpoint: the contract's keys, the unwrapped model, one epoch of 3 steps ---------------------------
    state = load_checkpoint(first.latest_checkpoint)
    assert (state["format"], state["epoch"], state["step"], state["data_seed"]) == ("eco-pipeline/1", 1, 3, 0)
    assert state["config"] == cfg.to_dict()
    assert state["label_names"] == read_labels(tiny_data) and len(state["label_names"]) == TINY_CLASSES
    reference = eco_lite(num_classes=TINY_CLASSES, num_segments=4).state_dict()
    assert {k: tuple(v.shape) for k, v in state["model"].items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert state["optimizer"]["state"], "momentum buffers are saved"
    assert state["schedule"]["steps_per_epoch"] == STEPS_PER_EPOCH
    workers = json.loads(Path(first.latest_checkpoint, "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1] and workers[0]["pid"] != workers[1]["pid"]

    # --- metrics are exact sums over both ranks: every clip counted once ---------------------------------------
    m = state["metrics"]
    assert (m["train_count"], m["val_count"], m["train_clips"]) == (TINY_TRAIN, TINY_VAL, TINY_TRAIN)
    assert (m["decode_failures"], m["decode_failures_total"]) == (1, 1)
    (failure,) = json.loads(Path(first.latest_checkpoint, "decode_failures.json").read_text())
    assert (failure["path"], failure["video_id"], failure["epoch"]) == (broken, "broken.mp4", 0)
    assert failure["reason"] in {"not_a_video", "decode_error", "truncated"} and failure["detail"]
    assert 0 <= m["data_wait_frac"] <= 1 and m["clips_per_s"] > 0
    # The 2-rank validation during training equals a single-process evaluation of the same checkpoint.
    report = evaluate(first.latest_checkpoint, tiny_data, out_dir=tmp_path / "eval")
    assert report["videos"] == TINY_VAL and report["incomplete_videos"] == 0
    assert report["top1"] == pytest.approx(m["val_top1"])
    assert report["mean_class_acc"] == pytest.approx(m["val_mean_class_acc"])
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["confusion.png", "predictions.parquet",
                                                                     "report.json"]
    predictions = pq.read_table(tmp_path / "eval" / "predictions.parquet")
    assert predictions.num_rows == TINY_VAL
    assert sum(predictions.column("correct").to_pylist()) == round(report["top1"] * TINY_VAL)

    # --- the W&B offline run, read back from its .wandb file -------------------------------------------------
    runs = find_offline_runs(wandb_dir(cfg))
    assert len(runs) == 1 and first.wandb_dir == str(runs[0])
    run = read_offline_run(runs[0])
    assert run.exited and run.run_id == run_id(cfg) and run.project == "eco-pipeline"
    assert {k: run.config[k] for k in cfg.to_dict()} == cfg.to_dict()
    assert run.config["world_size"] == 2
    assert run.values("train/step") == [1, 2, 3]
    assert all(math.isfinite(v) for v in run.values("train/loss"))
    assert run.values("epoch/val_top1") == [pytest.approx(m["val_top1"])]
    assert run.values("epoch/train_count") == [TINY_TRAIN]
    confusion = run.values("val/confusion_counts")[0]
    assert confusion == report["confusion"]
    assert any(k.startswith("val/sample_clips") for row in run.history for k in row)
    assert any(k.startswith("val/confusion_matrix") for row in run.history for k in row)
