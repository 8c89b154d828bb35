"""Read W&B offline runs back from their `.wandb` transaction logs: a test tool (the library keeps its own record
of what it logged, pipeline.training.tracking, and never reads W&B's private format).

wandb 0.31 ships no Python reader for these files (its datastore moved into the Go `wandb-core`).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def sealed_offline_runs(record_dir: str | Path) -> list[OfflineRun]:
    """The sealed W&B segments a run recorded in `<record_dir>/wandb_runs.json` (what its `wandb sync` uploads),
    read back, oldest first."""
    record = json.loads(Path(record_dir, "wandb_runs.json").read_text())
    return [read_offline_run(r["dir"]) for r in record["runs"] if r.get("sealed")]
