"""W&B continuity from the project's own record (pipeline.training.tracking): segments sealed at checkpoints, a
killed attempt's unsealed rows left out of the upload and logged again by the next attempt, every step once in
what `wandb sync` uploads. Real wandb (offline) and a real hard kill: wandb-core keeps the last 32 KiB of its log in
memory, so the killed attempt's last rows never reach its file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.training.tracking import RUNS_RECORD, Tracker, read_rows, recorded_runs, run_id
from tests.wandb_offline import find_offline_runs, sealed_offline_runs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def _config(tmp_path: Path):
    return load_config(None, [f"checkpoint.storage_path={tmp_path / 'runs'}", "checkpoint.run_name=segments",
                              "wandb.mode=offline"])


def _steps(tracker: Tracker, steps: range) -> None:
    for s in steps:
        tracker.log({"train/step": s, "train/loss": 1.0 / s})


KILLED_ATTEMPT = """
import os, signal, sys
from pipeline.config import load_config
from pipeline.training.tracking import Tracker
cfg = load_config(None, [f"checkpoint.storage_path={sys.argv[1]}", "checkpoint.run_name=segments",
                         "wandb.mode=offline"])
t = Tracker(cfg, rank=0)
for s in (1, 2):
    t.log({"train/step": s, "train/loss": 1.0 / s})
t.log({"epoch": 1, "epoch/epoch_complete": 1, "epoch/val_top1": 0.5})
t.seal()  # the checkpoint of epoch 1 (steps 1-2)
t.log({"train/step": 3, "train/loss": 1.0 / 3})  # epoch 2 begins; then the worker is killed
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_attempts_unsealed_rows_are_logged_again_once(tmp_path):
    cfg = _config(tmp_path)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_ATTEMPT), str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == -9, done.stderr[-3000:]
    record = recorded_runs(cfg)
    assert [(r["sealed"], r.get("last_step"), r.get("last_epoch")) for r in record] == [(True, 2, 1),
                                                                                          (False, None, None)]
    # Step 3 was logged into the unsealed segment, and with wandb 0.31 the hard kill lost it (never in its file).

    # The next attempt resumes from epoch 1's checkpoint: steps 1-2 and epoch 1 are sealed, step 3 is new again.
    second = Tracker(cfg, rank=0)
    _steps(second, range(1, 5))
    second.log({"epoch": 1, "epoch/epoch_complete": 1, "epoch/val_top1": 0.5})
    second.log({"epoch": 2, "epoch/epoch_complete": 1, "epoch/val_top1": 0.75})
    second.summary({"best_val_top1": 0.75})
    second.finish()

    runs = sealed_offline_runs(tmp_path / "runs" / "segments")
    assert [r.values("train/step") for r in runs] == [[1, 2], [3, 4]]
    assert [r.values("epoch") for r in runs] == [[1], [2]]
    assert len({r.run_id for r in runs} | {run_id(cfg)}) == 1 and all(r.exited for r in runs)
    assert runs[-1].summary["best_val_top1"] == 0.75
    # The project's own rows match what W&B holds, segment by segment.
    sealed = [r["dir"] for r in recorded_runs(cfg) if r["sealed"]]
    assert [[row["train/step"] for row in read_rows(d) if "train/step" in row] for d in sealed] == [[1, 2], [3, 4]]
    assert json.loads((tmp_path / "runs" / "segments" / RUNS_RECORD).read_text())["runs"][-1]["last_step"] == 4


def test_a_finished_run_resubmitted_logs_nothing_and_writes_no_folder(tmp_path):
    cfg = _config(tmp_path)
    first = Tracker(cfg, rank=0)
    first.start()
    _steps(first, range(1, 4))
    first.seal()
    first.finish()  # nothing logged since the seal: no second segment
    assert len(find_offline_runs(tmp_path)) == 1
    again = Tracker(cfg, rank=0)
    _steps(again, range(1, 4))
    again.finish()
    assert len(find_offline_runs(tmp_path)) == 1
    assert [r.values("train/step") for r in sealed_offline_runs(tmp_path / "runs" / "segments")] == [[1, 2, 3]]
    # Only rank 0 logs.
    other = Tracker(cfg, rank=1)
    _steps(other, range(4, 6))
    other.finish()
    assert not other.enabled and len(find_offline_runs(tmp_path)) == 1

