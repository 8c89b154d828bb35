"""The project checkpoint format (eco_contract.md, "PROJECT CHECKPOINT FORMAT"): save, load, unwrap.

A checkpoint is a directory holding `checkpoint.pt`, a `torch.save` of plain tensors and values, so it loads with
`weights_only=True`, and `model.pt`, the same dict without the optimiser state: what evaluation and inference read
(about half the bytes for ECO with SGD momentum, issue 11 item 12). Checkpoints are read from local paths and URIs
alike (pipeline.storage); they are written locally, and Ray Train uploads the directory to its storage. This module is the one place that unwraps DDP / `torch.compile`, so the saved keys are the
model's own names (what `pipeline.model.weights.read_checkpoint` and inference expect).

Writes are atomic: the directory is built under a temporary name next to its destination and renamed into place
only when complete. Ray Train copies the directory to storage inside `ray.train.report`, and registers it only
after the copy finished, so a crash at any point leaves either the previous checkpoint or a complete new one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import storage
from pipeline.model.weights import PROJECT_FORMAT as FORMAT
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"  # the checkpoint without optimiser state, for evaluation and inference
REQUIRED_KEYS = ("format", "model", "optimizer", "epoch", "step", "config", "label_names", "data_seed", "metrics")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def build_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    epoch: int,
    step: int,
    config: dict[str, Any],
    label_names: list[str],
    data_seed: int,
    metrics: dict[str, float],
    schedule: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict. `epoch` = completed epochs, `step` = optimiser steps taken so far."""
    state = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else {},
        "epoch": int(epoch),
        "step": int(step),
        "config": config,
        "label_names": list(label_names),
        "data_seed": int(data_seed),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    if schedule is not None:
        # Not in the minimal contract, but the issue asks for the schedule in the checkpoint: the lr is a pure
        # function of (step, schedule), and steps_per_epoch depends on the dataset, so keep the exact numbers.
        state["schedule"] = dict(schedule)
    return state


def save_checkpoint(directory: str | Path, state: dict[str, Any], extra_json: dict[str, Any] | None = None) -> Path:
    """Atomically write `state` to `directory/checkpoint.pt` (plus `<name>.json` files from `extra_json`)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing keys {missing}; build it with build_state()")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_synced(tmp / CHECKPOINT_FILE, lambda f: torch.save(state, f))
        _write_synced(tmp / MODEL_FILE, lambda f: torch.save(model_state(state), f))
        for name, payload in (extra_json or {}).items():
            text = json.dumps(payload, indent=2, sort_keys=True).encode()
            _write_synced(tmp / f"{name}.json", lambda f, t=text: f.write(t))
        if directory.exists():
            # Replace an older checkpoint of the same name: move it aside first so the rename stays atomic.
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def model_state(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict without optimiser state (still a complete checkpoint for evaluation and inference)."""
    return {**state, "optimizer": {}}


def checkpoint_file(path: str | Path, name: str = CHECKPOINT_FILE) -> str:
    """`path` itself if it is a file, else `path/<name>`; local paths (made absolute) or URIs."""
    return storage.join(path, name) if storage.is_dir(path) else storage.absolute(path)


def model_file(path: str | Path) -> str:
    """What evaluation and inference read: `path/model.pt` when `path` is a checkpoint directory holding one, else
    `path` as given (a file, an authors' release, or a directory written before model.pt existed)."""
    if storage.is_dir(path) and storage.is_file(storage.join(path, MODEL_FILE)):
        return storage.join(path, MODEL_FILE)
    return str(path)


def load_model_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's model, config and labels, without reading its optimiser state when model.pt is there."""
    return load_checkpoint(model_file(path), map_location=map_location)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a project checkpoint (a directory with checkpoint.pt, or the file; a local path or a URI) safely
    (`weights_only=True`)."""
    file = checkpoint_file(path)
    if not storage.is_file(file):
        raise FileNotFoundError(f"{file}: no project checkpoint (expected a directory containing {CHECKPOINT_FILE})")
    try:
        source = io.BytesIO(storage.read_bytes(file)) if storage.is_uri(file) else file
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{file}: cannot be loaded as a project checkpoint with weights_only=True: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{file}: expected format {FORMAT!r}, got {got!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"{file}: checkpoint is missing keys {missing}")
    return state


def restore(model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]) -> None:
    """Load model (strict) and optimiser state from a checkpoint dict into possibly wrapped objects."""
    unwrap(model).load_state_dict(state["model"], strict=True)
    if optimizer is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)
