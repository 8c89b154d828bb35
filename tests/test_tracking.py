"""W&B continuity from the project's own record: a resumed attempt logs only what earlier attempts did not (real
offline wandb runs, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Config
from pipeline.training.tracking import LOGGED_RECORD, Logged, Tracker, logged_record, read_logged, read_rows, run_id
from tests.wandb_offline import find_offline_runs, read_offline_run


def _config(tmp_path: Path) -> Config:
    return Config().replace({"checkpoint.storage_path": str(tmp_path / "runs"), "checkpoint.run_name": "tracked",
                             "wandb.enabled": True, "wandb.mode": "offline", "wandb.dir": str(tmp_path / "wandb")})


def _attempt(cfg: Config, rows: list[dict]) -> Path | None:
    tracker = Tracker(cfg, rank=0)
    for row in rows:
        tracker.log(row)
    folder = tracker.local_dir
    tracker.finish()
    return folder


def test_a_resumed_attempt_logs_each_step_and_completed_epoch_once(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert read_logged(cfg).step == 0 and read_logged(cfg).epoch == 0  # no record yet: nothing logged
    # Launch 1 stops inside epoch 1 (train.max_steps): its epoch row is not a complete epoch.
    first = _attempt(cfg, [{"train/step": 1, "train/loss": 2.0}, {"train/step": 2, "train/loss": 1.5},
                           {"epoch": 1, "epoch/epoch_complete": 0.0, "epoch/val_top1": 0.25}])
    record = json.loads(Path(logged_record(cfg)).read_text())
    assert record == {"run_id": run_id(cfg), "step": 2, "epoch": 0}
    assert Path(logged_record(cfg)).name == LOGGED_RECORD and Path(logged_record(cfg)).parent.name == "tracked"

    # Launch 2 resumes from step 1's checkpoint: steps 1..2 are not sent again; epoch 1 (now complete) is, once.
    second = _attempt(cfg, [{"train/step": 2, "train/loss": 9.0}, {"train/step": 3, "train/loss": 1.0},
                            {"epoch": 1, "epoch/epoch_complete": 1.0, "epoch/val_top1": 0.5},
                            {"train/step": 4, "train/loss": 0.5},
                            {"epoch": 2, "epoch/epoch_complete": 1.0, "epoch/val_top1": 0.75}])
    assert read_logged(cfg) == Logged(run_id(cfg), step=4, epoch=2)

    # Launch 3 (a finished run resubmitted) has nothing new: no folder, nothing logged.
    assert _attempt(cfg, [{"train/step": 4, "train/loss": 0.5}, {"epoch": 2, "epoch/epoch_complete": 1.0}]) is None

    runs = [read_offline_run(p) for p in find_offline_runs(cfg.wandb.dir)]
    assert [r.path for r in runs] == [first, second] and runs[0].run_id == runs[1].run_id == run_id(cfg)
    assert (runs[0].values("train/step"), runs[1].values("train/step")) == ([1, 2], [3, 4])
    assert (runs[0].values("epoch"), runs[1].values("epoch")) == ([1], [1, 2])
    # The project's own rows beside each run say the same, with their times (what the benchmarks read).
    rows = read_rows(second)
    assert [r.get("train/step") for r in rows] == [3.0, None, 4.0, None]
    assert [r["epoch/val_top1"] for r in rows if "epoch" in r] == [0.5, 0.75]
    assert all(r["_timestamp"] > 0 for r in rows)


def test_a_record_of_another_run_id_is_not_this_runs(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    path = Path(logged_record(cfg))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": "someone-else", "step": 99, "epoch": 9}))
    assert (read_logged(cfg).step, read_logged(cfg).epoch) == (0, 0)
