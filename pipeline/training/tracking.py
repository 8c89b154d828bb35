"""Weights & Biases tracking: the only module that imports wandb.

Only the rank-0 training worker creates a run, with a plain `wandb.init` guarded by rank (Ray's `setup_wandb`
would still log from every rank under Train V2). Runs are offline by default and written under the Ray run's
storage directory when it is local (else under `wandb.dir`, default `outputs/wandb/<run>` of the launching
directory), so `wandb sync <dirs>` uploads them later. The API key is read by wandb itself from the environment
(WANDB_API_KEY) in online mode; this module never reads, prints or stores it.

One W&B run holds every attempt of a training run: the run id is a function of (storage, run name). Offline, the
W&B run is written in segments, one `offline-run-*` folder each, sealed at every checkpoint: wandb-core keeps the
last 32 KiB of its log in memory until the run finishes, so a killed worker loses its last rows, and only a
finished segment is known to hold what was logged. Sealing a segment (finishing it, then recording its last step
and epoch in `<storage>/<run>/wandb_runs.json`) happens before the checkpoint is reported, so every checkpoint a
later attempt can resume from is covered by sealed segments. A resumed attempt skips the rows the sealed segments
hold and logs everything after them again; an unsealed segment (a killed attempt's rows after its last
checkpoint, possibly lost) is left out of the upload, its work redone. `wandb sync` of the sealed segments, oldest
first, therefore gives every step and epoch once. An attempt with nothing left to log creates no folder at all.
Each segment also holds `rows.jsonl`, the scalar rows as this module logged them (for benchmarks and readers that
should not parse W&B's private log).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.config import Config

log = logging.getLogger(__name__)

RUNS_RECORD = "wandb_runs.json"  # in the Ray run directory: every segment folder of every attempt
ROWS_FILE = "rows.jsonl"  # in each segment folder: its scalar rows, as logged


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
    """Every segment folder of this run, oldest first: {"dir", "host", "sealed", "last_step", "last_epoch"}."""
    try:
        return list(json.loads(storage.read_text(runs_record(cfg))).get("runs", []))
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{runs_record(cfg)}: not a W&B runs record ({e})") from e


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The scalar rows this module logged into a segment folder, in order (its own record, not W&B's log)."""
    path = Path(folder, ROWS_FILE)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sync_command(dirs: list[str]) -> str:
    """The one command that uploads every folder, oldest first (wandb sync appends to the same run id)."""
    return "wandb sync " + " ".join(dirs)


def _record_run(cfg: Config, entry: dict[str, Any]) -> None:
    runs = [r for r in recorded_runs(cfg) if r.get("dir") != entry["dir"]]
    storage.write_text(runs_record(cfg), json.dumps({"runs": [*runs, entry]}, indent=2))


def _sealed_progress(cfg: Config) -> tuple[int, int]:
    """(last train/step, last complete epoch) held by the sealed segments of earlier attempts."""
    sealed = [r for r in recorded_runs(cfg) if r.get("sealed")]
    return (max((int(r.get("last_step", 0)) for r in sealed), default=0),
            max((int(r.get("last_epoch", 0)) for r in sealed), default=0))


def run_id(cfg: Config) -> str:
    """A stable W&B run id for (storage, run name): a resumed or restarted run appends to the same W&B run."""
    slug = re.sub(r"[^a-zA-Z0-9_-]", "-", cfg.checkpoint.run_name)[:40]
    digest = hashlib.blake2b(f"{cfg.checkpoint.storage_path}|{cfg.checkpoint.run_name}".encode(),
                             digest_size=4).hexdigest()
    return f"{slug}-{digest}"


class Tracker:
    """A W&B run on rank 0, a silent no-op elsewhere or when disabled.

    A segment starts at the first row logged after the last seal, so an attempt with nothing to log writes no
    folder.
    """

    def __init__(self, cfg: Config, *, rank: int, extra_config: dict[str, Any] | None = None):
        self.run = None
        self._cfg, self._extra = cfg, extra_config
        self._active = rank == 0 and cfg.wandb.enabled and cfg.wandb.mode != "disabled"
        self._segments = self._active and cfg.wandb.mode == "offline"
        self._logged_step = self._logged_epoch = 0  # what sealed segments hold: not logged again
        if self._segments:
            self._logged_step, self._logged_epoch = _sealed_progress(cfg)
        self._last_step, self._last_epoch = self._logged_step, self._logged_epoch
        self._summary: dict[str, Any] = {}
        self._rows = None  # the segment's rows.jsonl, open for appending

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
        for k, v in self._summary.items():
            self.run.summary[k] = v
        if self._segments:
            _record_run(cfg, self._entry(sealed=False))
            self._rows = open(Path(self.local_dir, ROWS_FILE), "a")  # noqa: SIM115 - closed at the seal
        log.info("W&B run %s (%s) in %s", self.run.id, cfg.wandb.mode, self.local_dir)
        return True

    def _entry(self, *, sealed: bool) -> dict[str, Any]:
        entry = {"dir": str(self.local_dir), "host": socket.gethostname(), "sealed": sealed}
        return {**entry, "last_step": self._last_step, "last_epoch": self._last_epoch} if sealed else entry

    def _new(self, metrics: dict[str, Any]) -> bool:
        """False for a row a sealed segment already holds (a resumed attempt redoing work)."""
        if "train/step" in metrics and int(metrics["train/step"]) <= self._logged_step:
            return False
        if "epoch" in metrics and int(metrics["epoch"]) <= self._logged_epoch:
            return False
        return True

    def _logged(self, metrics: dict[str, Any]) -> None:
        if "train/step" in metrics:
            self._last_step = max(self._last_step, int(metrics["train/step"]))
        # An epoch stopped inside (train.max_steps, epoch/epoch_complete 0) is not done: the resumed attempt's
        # row for the completed epoch must still reach W&B.
        if "epoch" in metrics and metrics.get("epoch/epoch_complete") == 1:
            self._last_epoch = max(self._last_epoch, int(metrics["epoch"]))
        if self._rows is not None:
            scalars = {k: v for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
            self._rows.write(json.dumps({**scalars, "time": time.time()}) + "\n")
            self._rows.flush()

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
            self._logged(metrics)

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
        self._logged({"epoch": epoch})

    def summary(self, values: dict[str, Any]) -> None:
        """Summary values of the W&B run: set now and in every later segment (the last one sealed wins)."""
        self._summary.update(values)
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def seal(self) -> None:
        """End the segment before a checkpoint is reported: finish it (wandb-core writes out what it holds) and
        record how far it got. The next row starts the next segment."""
        if self.run is None or not self._segments:
            return
        entry = self._entry(sealed=True)
        self._close()
        try:
            _record_run(self._cfg, entry)
        except OSError as e:  # storage down past its retries: the segment counts as unsealed (not in the printed
            # sync command); the folder itself is complete, so the warning names it for a `wandb sync` by hand
            log.warning("W&B segment %s is complete but could not be recorded as sealed (%s): add it to the "
                        "run's `wandb sync` yourself", entry["dir"], e)
            return
        self._logged_step, self._logged_epoch = self._last_step, self._last_epoch

    def finish(self) -> None:
        if self._segments:
            self.seal()
        self._close()

    def _close(self) -> None:
        if self._rows is not None:
            self._rows.close()
            self._rows = None
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
