"""The one checkpoint reader: `read(path) -> Checkpoint`, used by the model builders, `eco predict`, `eco evaluate`,
batch inference and resume.

Files are opened with `torch.load(weights_only=True)` (tensors and plain values only, never pickled code), from a
local path or a URI (pipeline.storage). Two layouts are recognised:

- project: a directory holding `model.pt` / `checkpoint.pt`, or either file: `{"format": "eco-pipeline/1",
  "model": <state_dict>, "config", "label_names", ...}` as pipeline.training.checkpoint writes it;
- official: the authors' `{"state_dict": {...}, "epoch", "arch", ...}` (ECO-Lite and ECO-Full), keys
  `module.base_model.<caffe layer>.<param>` and `module.new_fc.<param>`, with or without the `module.` prefix
  that nn.DataParallel adds (re-saved files often drop it); a bare state_dict of either naming is read too.

A file is refused with a CheckpointError whose `reason` names why, the same for every entry point.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline import storage
from pipeline.model.keys import HEAD, CheckpointError, listed, official_key_to_project, official_to_project

log = logging.getLogger(__name__)

PROJECT_FORMAT = "eco-pipeline/1"
CHECKPOINT_FILE = "checkpoint.pt"  # the whole training state: what a resume reads
MODEL_FILE = "model.pt"  # the same without optimiser state: what evaluation and inference read (about half the bytes)

Layout = Literal["project", "official"]


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation preprocessing a checkpoint was trained for: TSN centre sampling, resize, centre crop."""

    num_segments: int
    short_side: int
    crop_size: int
    normalization: str


# The authors' PyTorch test script resizes the short side to 256 (scale_size = 224 * 256 // 224) and centre-crops
# 224 from 16 segment centres; the book (seed ch. 9) resized to 224 instead, which crops less context. We follow the
# authors; pass `preprocessing=` to `Predictor.from_checkpoint` to reproduce the book.
OFFICIAL_PREPROCESSING = Preprocessing(num_segments=16, short_side=256, crop_size=224, normalization="eco")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as every entry point sees it: the weights in this project's key names and what they imply."""

    file: str  # the file read (a local path or a URI)
    layout: Layout
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    variant: Literal["lite", "full"]
    num_classes: int
    label_names: tuple[str, ...]
    preprocessing: Preprocessing
    dropout: float
    config: dict[str, Any] | None = field(default=None, repr=False)  # the training config (project layout only)
    stored: dict[str, Any] = field(default_factory=dict, repr=False)  # everything else the file holds

    def run_config(self):
        """The Config evaluation runs with: the stored one, else the defaults with this checkpoint's preprocessing
        (the authors' files carry no config)."""
        from pipeline.config import Config

        if self.config is not None:
            return Config.from_dict(self.config)
        p = self.preprocessing
        return Config().replace({"model.variant": self.variant, "model.num_segments": p.num_segments,
                                 "model.dropout": self.dropout, "data.short_side": p.short_side,
                                 "data.crop_size": p.crop_size, "data.normalization": p.normalization})


def resolve(path: str | os.PathLike, *, prefer: str = MODEL_FILE) -> str:
    """A checkpoint file, or a directory holding `prefer` (else `checkpoint.pt`) -> that file; local or a URI."""
    text = str(path)
    try:
        if storage.is_dir(text):
            for name in dict.fromkeys((prefer, CHECKPOINT_FILE)):
                child = storage.join(text, name)
                if storage.is_file(child):
                    return child if storage.is_uri(text) else str(Path(child))
            raise CheckpointError(f"{text} is a directory without {CHECKPOINT_FILE}: expected a project checkpoint "
                                  f"directory or a checkpoint file", reason="not_a_checkpoint")
        exists = storage.exists(text)
    except CheckpointError:
        raise
    except (OSError, ValueError) as e:  # pyarrow's and storage's errors subclass these
        raise CheckpointError(f"{text}: cannot access the checkpoint ({_first_line(e)})", reason="unreadable") from e
    if not exists:
        raise FileNotFoundError(f"checkpoint not found: {text}")
    return text


def read_dict(path: str | os.PathLike, *, prefer: str = MODEL_FILE) -> tuple[dict[str, Any], str]:
    """The stored dict of a checkpoint (or of any weights file), read safely on the CPU, and the file it came from.

    Raises CheckpointError naming the file when it is truncated, not a torch file, holds objects other than tensors
    and plain values, or is not a dict; FileNotFoundError when there is nothing at `path`.
    """
    file = resolve(path, prefer=prefer)
    try:
        source: str | io.BytesIO = io.BytesIO(storage.read_bytes(file)) if storage.is_uri(file) else file
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read the checkpoint ({_first_line(e)})", reason="unreadable") from e
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names a refused class "Unsupported global"; any other unpickling error is a file of another kind.
        unsafe = "Unsupported global" in str(e)
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint, or it holds objects other than tensors "
                              f"and plain values (refused by torch.load(weights_only=True)): {_first_line(e)}",
                              reason="unsafe" if unsafe else "unreadable") from e
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"{file}: truncated or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{_first_line(e)})", reason="unreadable") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: not a checkpoint: holds a {type(obj).__name__}, expected a dict (the "
                              f"authors' {{'state_dict': ...}} or this project's {{'format': ..., 'model': ...}})",
                              reason="not_a_checkpoint")
    return obj, file


def read(path: str | os.PathLike, *, prefer: str = MODEL_FILE) -> Checkpoint:
    """Read an ECO checkpoint of either layout (see the module docstring). A directory is read through `model.pt`
    when it has one (no optimiser state), else `checkpoint.pt`; `prefer=CHECKPOINT_FILE` reads the training state."""
    obj, file = read_dict(path, prefer=prefer)
    return interpret(obj, file=file)


def interpret(obj: Mapping[str, Any], *, file: str = "checkpoint") -> Checkpoint:
    """A checkpoint dict already in memory -> Checkpoint (`file` names it in messages)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{file}: not a checkpoint: holds a {type(obj).__name__}, expected a dict",
                              reason="not_a_checkpoint")
    stored = {k: v for k, v in obj.items() if k not in ("model", "state_dict")}
    if "format" in obj:
        if obj["format"] != PROJECT_FORMAT:
            raise CheckpointError(f"{file}: unsupported checkpoint format {obj['format']!r}; this version reads "
                                  f"{PROJECT_FORMAT!r} and the authors' layout", reason="unsupported_format")
        layout: Layout = "project"
        weights = _tensors(obj.get("model"), file)
    elif "state_dict" in obj:
        layout, weights = "official", _tensors(obj["state_dict"], file)
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        # A bare state_dict (torch.save(model.state_dict())): the authors' names or ours.
        weights, stored = dict(obj), {}
        layout = "official" if any(official_key_to_project(k) for k in weights) else "project"
    else:
        raise CheckpointError(f"{file}: not a model checkpoint: top-level keys {listed([str(k) for k in obj])}; "
                              f"expected 'state_dict' (the authors' layout) or 'format' + 'model' (this project's)",
                              reason="not_a_checkpoint")
    if layout == "official":
        try:
            weights = official_to_project(weights)
        except CheckpointError as e:
            raise CheckpointError(f"{file}: {e}", reason=e.reason) from e

    labels = obj.get("label_names") if layout == "project" else None
    head = weights.get(f"{HEAD}.weight")
    if head is not None and head.dim() == 2:
        num_classes = int(head.shape[0])
        if labels is not None and len(labels) != num_classes:
            raise CheckpointError(f"{file}: {len(labels)} label names for a classifier of {num_classes} classes",
                                  reason="incomplete")
    elif labels is not None:
        num_classes = len(labels)  # a project checkpoint of another model (the training tests' small ones)
    else:
        raise CheckpointError(f"{file}: no classifier ({HEAD}.weight, the authors' module.new_fc.weight): not a "
                              f"whole ECO checkpoint (the authors' separate 2D/3D starting files go to "
                              f"model.init_2d / model.init_3d)", reason="incomplete")
    if labels is None:
        labels = _default_labels(num_classes, file)
    # ECO-Full carries the rest of BN-Inception (inception_4*/5*) as its second 2D stream.
    variant: Literal["lite", "full"] = "full" if any(k.startswith("stream2d.") for k in weights) else "lite"
    config = obj.get("config") if layout == "project" else None
    if config is not None:
        from pipeline.config import Config

        cfg = Config.from_dict(config)
        preprocessing = Preprocessing(num_segments=cfg.model.num_segments, short_side=cfg.data.short_side,
                                      crop_size=cfg.data.crop_size, normalization=cfg.data.normalization)
        dropout = cfg.model.dropout
    else:
        preprocessing, dropout = OFFICIAL_PREPROCESSING, 0.0
    return Checkpoint(file=file, layout=layout, state_dict=weights, variant=variant, num_classes=num_classes,
                      label_names=tuple(labels), preprocessing=preprocessing, dropout=dropout, config=config,
                      stored=stored)


def _tensors(state: Any, file: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: the model weights are not a mapping of tensors", reason="not_a_checkpoint")
    return dict(state)


def _default_labels(num_classes: int, file: str) -> tuple[str, ...]:
    if num_classes == 400:
        from pipeline.labels import kinetics400_labels

        return tuple(kinetics400_labels())
    log.warning("%s: %d classes is not Kinetics-400; labels are class_<index> (pass label_names=)", file,
                num_classes)
    return tuple(f"class_{i}" for i in range(num_classes))


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch's messages carry terminal bold codes
    return text.splitlines()[0].strip() if text else type(e).__name__
