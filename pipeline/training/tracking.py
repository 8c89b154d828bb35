"""Weights & Biases tracking: the only module that imports wandb.

Only the rank-0 training worker creates a run, with a plain `wandb.init` guarded by rank (Ray's `setup_wandb`
would still log from every rank under Train V2). Runs are offline by default and written under the Ray run's
storage directory when it is local (else under `wandb.dir`, default `outputs/wandb/<run>` of the launching
directory), so `wandb sync <dirs>` uploads them later. The API key is read by wandb itself from the environment
(WANDB_API_KEY) in online mode; this module never reads, prints or stores it.

One W&B run holds every attempt of a training run: the run id is a function of (storage, run name), and each
attempt (a worker-group restart after a failure, or a resubmission) writes its own `offline-run-*` folder for that
id. Every folder is recorded in `<storage>/<run>/wandb_runs.json` (local or on object storage, so the driver finds
them wherever rank 0 ran), and the run's summary prints one `wandb sync` command naming all of them.

What the run has logged is the project's own record, `<storage>/<run>/wandb_logged.json` (the last optimiser step
and the last complete epoch logged, and the run id), which rank 0 rewrites as it logs. An attempt that resumes
from a checkpoint does not log again what an earlier attempt logged, so every step and epoch appears once; an
attempt with nothing left to train (a finished run resubmitted) creates no folder at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.config import Config

log = logging.getLogger(__name__)

RUNS_RECORD = "wandb_runs.json"  # in the Ray run directory: every offline-run folder of every attempt
LOGGED_RECORD = "wandb_logged.json"  # beside it: what the W&B run has been sent so far
ROWS_FILE = "eco-rows.jsonl"  # in each offline-run folder: the scalar rows this attempt logged, for benchmarks


def wandb_dir(cfg: Config) -> Path:
    """Local directory given to `wandb.init(dir=...)` (wandb adds `wandb/offline-run-*` below it).

    Default: `<storage_path>/<run_name>` when storage is local, else `outputs/wandb/<run_name>`: wandb writes
    local files only.
    """
    if cfg.wandb.dir:
        return Path(cfg.wandb.dir).expanduser().absolute()
    if storage.is_uri(cfg.checkpoint.storage_path):
        # Relative to the launching process: pipeline.training.run fixes it on the driver (Ray workers run
        # elsewhere), so the folder is one the user can find.
        return Path("outputs/wandb", cfg.checkpoint.run_name).absolute()
    return Path(cfg.checkpoint.storage_path, cfg.checkpoint.run_name).absolute()


def runs_record(cfg: Config) -> str:
    """`<storage>/<run>/wandb_runs.json` (a local path or a URI)."""
    return storage.join(cfg.checkpoint.storage_path, cfg.checkpoint.run_name, RUNS_RECORD)


def recorded_runs(cfg: Config) -> list[dict[str, Any]]:
    """The offline-run folders every attempt of this run recorded, oldest first: {"dir", "host"} each."""
    try:
        return list(json.loads(storage.read_text(runs_record(cfg))).get("runs", []))
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{runs_record(cfg)}: not a W&B runs record ({e})") from e


def sync_command(dirs: list[str]) -> str:
    """The one command that uploads every folder, oldest first (wandb sync appends to the same run id)."""
    return "wandb sync " + " ".join(dirs)


def _record_run(cfg: Config, run_dir: Path) -> None:
    runs = [r for r in recorded_runs(cfg) if r.get("dir") != str(run_dir)]
    runs.append({"dir": str(run_dir), "host": socket.gethostname()})
    storage.write_text(runs_record(cfg), json.dumps({"runs": runs}, indent=2))


@dataclass(frozen=True)
class Logged:
    """What a W&B run has been sent: the last optimiser step and the last complete epoch (0: none)."""

    run_id: str
    step: int = 0
    epoch: int = 0


def logged_record(cfg: Config) -> str:
    """`<storage>/<run>/wandb_logged.json` (a local path or a URI)."""
    return storage.join(cfg.checkpoint.storage_path, cfg.checkpoint.run_name, LOGGED_RECORD)


def read_logged(cfg: Config) -> Logged:
    """What earlier attempts of this run logged, from the project's record (nothing when there is none)."""
    rid = run_id(cfg)
    try:
        data = json.loads(storage.read_text(logged_record(cfg)))
    except FileNotFoundError:
        return Logged(rid)
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{logged_record(cfg)}: not a W&B logged record ({e})") from e
    if data.get("run_id") != rid:
        return Logged(rid)  # a record of another W&B run (another storage path): nothing of this one
    return Logged(rid, step=int(data.get("step", 0)), epoch=int(data.get("epoch", 0)))


def find_offline_runs(root: str | Path) -> list[Path]:
    """The `offline-run-*` directories below `root`, oldest first."""
    return sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)


def read_rows(run_dir: str | Path) -> list[dict[str, float]]:
    """The scalar rows an attempt logged (each with its `_timestamp`, unix seconds), from the project's own file
    in its offline-run folder; [] when it logged none."""
    path = Path(run_dir) / ROWS_FILE
    if not path.exists():
        return []
    # A line cut short by a killed worker is the last one: the rows before it stand.
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def run_id(cfg: Config) -> str:
    """A stable W&B run id for (storage, run name): a resumed or restarted run appends to the same W&B run."""
    slug = re.sub(r"[^a-zA-Z0-9_-]", "-", cfg.checkpoint.run_name)[:40]
    digest = hashlib.blake2b(f"{cfg.checkpoint.storage_path}|{cfg.checkpoint.run_name}".encode(),
                             digest_size=4).hexdigest()
    return f"{slug}-{digest}"


class Tracker:
    """A W&B run on rank 0, a silent no-op elsewhere or when disabled.

    The run starts at the first row this attempt logs, so an attempt with nothing to log writes no folder.
    """

    def __init__(self, cfg: Config, *, rank: int, extra_config: dict[str, Any] | None = None):
        self.run = None
        self._cfg, self._extra = cfg, extra_config
        self._active = rank == 0 and cfg.wandb.enabled and cfg.wandb.mode != "disabled"
        # `_earlier` bounds what this attempt skips; `_logged` grows as it logs and is written to the record.
        self._earlier = self._logged = read_logged(cfg) if self._active else Logged(run_id(cfg))

    def start(self) -> bool:
        """Start the run now (a fresh run: its run record is on disk before anything can kill the worker, e.g. a
        sweep's scheduler stopping the trial after its first epoch)."""
        return self._start()

    def _start(self) -> bool:
        if self.run is not None or not self._active:
            return self.run is not None
        import wandb

        cfg, extra_config = self._cfg, self._extra
        directory = wandb_dir(cfg)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            mode=cfg.wandb.mode,
            dir=str(directory),
            id=run_id(cfg),
            name=cfg.checkpoint.run_name,
            group=cfg.wandb.group,
            tags=list(cfg.wandb.tags) or None,
            resume="allow",
            config={**cfg.to_dict(), **(extra_config or {})},
            # Keep the 2-core CI machine for training: no system-metrics sampler, no console capture or code copy.
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False,
                                    disable_git=True),
        )
        # Per-epoch metrics are plotted against the epoch, per-step ones against the optimiser step.
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("epoch")
        for prefix in ("epoch/*", "val/*"):
            self.run.define_metric(prefix, step_metric="epoch")
        if cfg.wandb.mode == "offline":
            _record_run(cfg, self.local_dir)
        log.info("W&B run %s (%s) in %s", self.run.id, cfg.wandb.mode, self.local_dir)
        return True

    def _new(self, metrics: dict[str, Any]) -> bool:
        """False for a row an earlier attempt of this run already logged (a resumed attempt redoing work)."""
        if "train/step" in metrics and int(metrics["train/step"]) <= self._earlier.step:
            return False
        if "epoch" in metrics and int(metrics["epoch"]) <= self._earlier.epoch:
            return False
        return True

    def _append_row(self, metrics: dict[str, Any]) -> None:
        row = {k: float(v) for k, v in metrics.items()
               if isinstance(v, int | float | np.integer | np.floating) and math.isfinite(float(v))}
        with open(self.local_dir / ROWS_FILE, "a") as f:
            f.write(json.dumps({**row, "_timestamp": time.time()}) + "\n")

    def _note(self, metrics: dict[str, Any]) -> None:
        """Record what was just sent. An epoch stopped inside (train.max_steps, epoch/epoch_complete 0) is not
        logged yet: the resumed attempt's row for the completed epoch must still reach W&B."""
        step = max(self._logged.step, int(metrics.get("train/step", 0)))
        epoch = self._logged.epoch
        if "epoch" in metrics and metrics.get("epoch/epoch_complete") == 1:
            epoch = max(epoch, int(metrics["epoch"]))
        if (step, epoch) != (self._logged.step, self._logged.epoch):
            self._logged = Logged(self._logged.run_id, step=step, epoch=epoch)
            storage.write_text(logged_record(self._cfg), json.dumps(asdict(self._logged)))

    @property
    def enabled(self) -> bool:
        return self._active

    @property
    def local_dir(self) -> Path | None:
        """The run's directory (`.../wandb/offline-run-*`): what `wandb sync` takes."""
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: dict[str, Any]) -> None:
        if self._new(metrics) and self._start():
            self.run.log(metrics)
            self._note(metrics)
            self._append_row(metrics)

    def log_evaluation(self, epoch: int, confusion: np.ndarray, label_names: list[str],
                       clips: np.ndarray | None = None, labels: list[int] | None = None,
                       preds: list[int] | None = None) -> None:
        """A confusion-matrix table plot and an image grid of sample clips (one row of frames per clip)."""
        if not self._new({"epoch": epoch}) or not self._start():
            return
        import wandb

        confusion = np.asarray(confusion, dtype=np.int64)
        rows = [[label_names[t], label_names[p], int(confusion[t, p])]
                for t in range(len(label_names)) for p in range(len(label_names))]
        # The counts are already summed over ranks, so build the chart from them with the same Vega spec that
        # wandb.plot.confusion_matrix uses (it only accepts per-sample predictions).
        chart = wandb.plot_table(
            vega_spec_name="wandb/confusion_matrix/v1",
            data_table=wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows),
            fields={"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            string_fields={"title": f"confusion (epoch {epoch})"},
        )
        payload: dict[str, Any] = {
            "epoch": epoch,
            "val/confusion_matrix": chart,
            # The raw counts too (rows: true class, columns: predicted), readable back from the offline run.
            "val/confusion_counts": confusion.tolist(),
        }
        if clips is not None and len(clips):
            payload["val/sample_clips"] = [
                wandb.Image(_frame_strip(clip), caption=_caption(i, labels, preds, label_names))
                for i, clip in enumerate(clips)
            ]
        self.run.log(payload)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _frame_strip(clip: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (H, T*W, 3): the clip's frames side by side, in time order."""
    clip = np.asarray(clip)
    t, h, w, c = clip.shape
    return clip.transpose(1, 0, 2, 3).reshape(h, t * w, c)  # (H, T, W, 3) -> (H, T*W, 3)


def _caption(i: int, labels, preds, names: list[str]) -> str:
    if labels is None:
        return f"clip {i}"
    text = f"true: {names[labels[i]]}"
    return text + (f" / pred: {names[preds[i]]}" if preds is not None else "")
