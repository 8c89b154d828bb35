"""Weights & Biases tracking: the only module that imports wandb.

Only the rank-0 training worker creates a run, with a plain `wandb.init` guarded by rank (Ray's `setup_wandb`
would still log from every rank under Train V2). Runs are offline by default and written under the Ray run's
storage directory when it is local (else under `wandb.dir`, default `outputs/wandb/<run>` of the launching
directory), so `wandb sync <dirs>` uploads them later. The API key is read by wandb itself from the environment
(WANDB_API_KEY) in online mode; this module never reads, prints or stores it.

One W&B run holds every attempt of a training run: the run id is a function of (storage, run
name), and each attempt (a worker-group restart after a failure, or a resubmission) writes its own
`offline-run-*` folder for that id. Every folder is recorded in `<storage>/<run>/wandb_runs.json` (local or on
object storage, so the driver finds them wherever rank 0 ran), and the run's summary prints one `wandb sync`
command naming all of them. An attempt that resumes from a checkpoint does not log again what an earlier attempt
of the same run already logged (steps and epochs up to the earlier folders' last ones), so every epoch appears
once; and an attempt with nothing left to train (a finished run resubmitted) creates no folder at all.

`read_offline_run` reads an offline run back from its `.wandb` file, for tests and for the demo's summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.config import Config

log = logging.getLogger(__name__)

RUNS_RECORD = "wandb_runs.json"  # in the Ray run directory: every offline-run folder of every attempt


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


def _already_logged(directory: Path, run_id_: str) -> tuple[int, int]:
    """(last train/step, last epoch) logged by earlier offline folders of this W&B run id under `directory`."""
    step = epoch = 0
    # wandb names the folder offline-run-<time>-<id>; the id inside the log is not enough, as an attempt killed
    # early may leave a log whose run record was never written.
    for folder in find_offline_runs(directory):
        if not folder.name.endswith(f"-{run_id_}"):
            continue
        try:
            run = read_offline_run(folder)
        except (FileNotFoundError, ValueError):
            continue  # a folder without a readable log logged nothing that reaches the dashboard
        step = max([step, *(int(v) for v in run.values("train/step"))])
        # An epoch stopped inside (train.max_steps, epoch/epoch_complete 0) is not logged yet: the resumed
        # attempt's row for the completed epoch must still reach W&B.
        epoch = max([epoch, *(int(row["epoch"]) for row in run.history
                              if row.get("epoch/epoch_complete") == 1)])
    return step, epoch


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
        self._logged_step = self._logged_epoch = 0
        if self._active and cfg.wandb.mode == "offline":
            self._logged_step, self._logged_epoch = _already_logged(wandb_dir(cfg), run_id(cfg))

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
        if "train/step" in metrics and int(metrics["train/step"]) <= self._logged_step:
            return False
        if "epoch" in metrics and int(metrics["epoch"]) <= self._logged_epoch:
            return False
        return True

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


# --- reading an offline run back ---------------------------------------------------------------------------

# The .wandb file is a LevelDB-style log (the same framing wandb's own former `datastore` module read): a 7-byte
# header ":W&B" + 0xBEE1 + version, then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`,
# where type FULL/FIRST/MIDDLE/LAST reassembles one serialized `wandb.proto.wandb_internal_pb2.Record`.
_HEADER = b":W&B\xe1\xbe"
_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run recorded: the config, each history row (logged dict), the final summary, files."""

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exited: bool = False

    def values(self, key: str) -> list[Any]:
        """Every logged value of `key`, in logging order."""
        return [row[key] for row in self.history if key in row]


def find_offline_runs(root: str | Path) -> list[Path]:
    """The `offline-run-*` directories below `root`, oldest first."""
    return sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse `run-<id>.wandb` in an offline run directory with wandb's protobuf `Record` definitions."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (expected an offline-run-* directory)")
    out = OfflineRun(path=run_dir)
    for raw in _records(files[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run_id, out.project = record.run.run_id, record.run.project
            out.group, out.tags = record.run.run_group, list(record.run.tags)
            out.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            out.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "files":
            out.files.extend(f.path for f in record.files.files)
        elif kind == "exit":
            out.exited = True
    out.config.pop("_wandb", None)
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _records(path: Path):
    data = path.read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path}: not a W&B transaction log (bad header {data[:7]!r})")
    pos, pending = len(_HEADER) + 1, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero-filled tail of a block
            pos += left
            continue
        chunk = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        if len(chunk) < length:
            break  # a run still being written: its last record is incomplete
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
