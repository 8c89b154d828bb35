"""Checkpoints: the authors' public ECO weights and this project's own, loaded strictly and safely.

Two layouts are read (files are always opened with `torch.load(weights_only=True)`: tensors and plain values only,
never arbitrary pickled objects):

- official: the authors' `ECO_Lite_rgb_model_Kinetics.pth.tar` (and their ECOfull checkpoints): a legacy torch
  pickle `{"state_dict": {...}, "epoch", "arch", "best_prec1", "lr"}` saved from `nn.DataParallel(TSN(...))`, keys
  `module.base_model.<caffe layer>.<param>` and `module.new_fc.{weight,bias}` (`module.base_model.fc_final.*`
  when they trained without dropout).
- project: a directory with `checkpoint.pt` (or the file) = `{"format": "eco-pipeline/1", "model": <state_dict>,
  ...}` as written by training (docs/model.md, the team contract).

`official_to_project` is the one pure key translation (timm's `checkpoint_filter_fn` pattern); `load_weights` then
checks every key and shape against the model and names whatever does not match. A different number of classes is
the one expected gap: the backbone loads, the classifier is re-initialised, and the caller is told so.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

PROJECT_FORMAT = "eco-pipeline/1"
CHECKPOINT_FILE = "checkpoint.pt"
_HEAD = "fc"  # the classifier of `pipeline.model.eco.ECO`
_MAX_LISTED = 12  # keys listed per category in an error message


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""


# Which submodule of ECO owns each Caffe layer. First match wins; `\1` is the regex group.
_LAYER_OWNERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), owner)
    for pattern, owner in (
        (r"(?:conv1|conv2|pool1|pool2)_", "net2d.basic_conv"),
        (r"inception_3a_", "net2d.inception_a"),
        (r"inception_3b_", "net2d.inception_b"),
        # ECO's 3D net branches off inception_3c after double_3x3_1; those two convs belong to the shared trunk.
        (r"inception_3c_double_3x3_(?:reduce|1)(?:_bn)?$", "net2d.inception_c"),
        (r"inception_3c_", "stream2d.inception_3c"),
        (r"inception_(4[a-e]|5[ab])_", r"stream2d.inception_\1"),
        (r"res([345])[ab]_", r"net3d.res\1"),
    )
)
_OFFICIAL_PREFIX = "base_model."
_OFFICIAL_HEADS = ("new_fc.", "base_model.fc_final.")


def official_to_project(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the authors' key names to this project's, one to one; values are passed through untouched.

    `module.base_model.inception_3a_1x1.weight` -> `net2d.inception_a.inception_3a_1x1.weight`,
    `module.base_model.res4a_down.bias` -> `net3d.res4.res4a_down.bias`, `module.new_fc.weight` -> `fc.weight`.
    The `module.` prefix (nn.DataParallel) is optional. A key that names no known layer raises CheckpointError
    naming it: nothing is dropped or guessed.
    """
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new_key = _official_key_to_project(key)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in out:
            raise CheckpointError(f"two checkpoint keys map to {new_key!r} (the second is {key!r})")
        out[new_key] = value
    if unknown:
        raise CheckpointError(f"unknown keys in the authors' checkpoint layout: {_listed(unknown)}; expected "
                              f"'module.base_model.<caffe layer>.<param>' or 'module.new_fc.<param>'")
    return out


def project_to_official(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `official_to_project`: this project's names -> `module.base_model.<layer>.<param>`."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == _HEAD and len(parts) == 2:
            out[f"module.new_fc.{parts[1]}"] = value
        elif len(parts) >= 3 and _official_key_to_project(f"{_OFFICIAL_PREFIX}{parts[-2]}.{parts[-1]}") == key:
            out[f"module.{_OFFICIAL_PREFIX}{parts[-2]}.{parts[-1]}"] = value
        else:
            raise CheckpointError(f"key {key!r} has no counterpart in the authors' checkpoint layout")
    return out


def _official_key_to_project(key: str) -> str | None:
    k = key.removeprefix("module.")
    for head in _OFFICIAL_HEADS:
        if k.startswith(head):
            param = k[len(head):]
            return f"{_HEAD}.{param}" if param and "." not in param else None
    if not k.startswith(_OFFICIAL_PREFIX):
        return None
    layer, _, param = k[len(_OFFICIAL_PREFIX):].partition(".")
    if not param or "." in param:
        return None
    for pattern, owner in _LAYER_OWNERS:
        m = pattern.match(layer)
        if m:
            return f"{m.expand(owner)}.{layer}.{param}"
    return None


@dataclass(frozen=True)
class LoadReport:
    """What `load_weights` did."""

    path: str
    layout: Literal["official", "project"]
    loaded: int  # tensors copied into the model
    checkpoint_num_classes: int
    model_num_classes: int
    head_reinitialized: bool  # the classifier was re-initialised because the class counts differ
    missing_counters: tuple[str, ...] = ()  # BatchNorm num_batches_tracked absent from the file (left at 0)

    def describe(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.path} ({self.layout} layout)"
        if self.head_reinitialized:
            text += (f"; classifier re-initialised: checkpoint has {self.checkpoint_num_classes} classes, "
                     f"model has {self.model_num_classes}")
        if self.missing_counters:
            text += f"; {len(self.missing_counters)} BatchNorm num_batches_tracked counters absent (left at 0)"
        return text


def resolve_checkpoint_path(path: str | os.PathLike) -> str:
    """A checkpoint file, or a directory holding `checkpoint.pt` -> that file. Local paths or URIs (s3://, gs://,
    file://; read through pyarrow.fs, as the config's `model.pretrained` may name object storage)."""
    if _is_uri(path):
        return _resolve_uri(str(path))
    p = Path(path)
    if p.is_dir():
        inner = p / CHECKPOINT_FILE
        if not inner.is_file():
            raise CheckpointError(f"{p} is a directory without {CHECKPOINT_FILE}: expected a project checkpoint "
                                  f"directory or a checkpoint file")
        return str(inner)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return str(p)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`, CPU). `path`: a file or a directory with checkpoint.pt,
    local or a URI.

    Returns the stored dict (official: with "state_dict"; project: with "format" and "model"); raises
    CheckpointError naming the file when it is truncated, not a torch file, holds non-weight objects, or is not
    a dict.
    """
    return _read_resolved(resolve_checkpoint_path(path))


def _read_resolved(file: str) -> dict[str, Any]:
    source: str | io.BytesIO = io.BytesIO(_read_uri(file)) if _is_uri(file) else file
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint, or it holds objects other than tensors "
                              f"and plain values (refused by torch.load(weights_only=True)): {_first_line(e)}") from e
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"{file}: truncated or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{_first_line(e)})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: not a checkpoint: holds a {type(obj).__name__}, expected a dict (the "
                              f"authors' {{'state_dict': ...}} or this project's {{'format': ..., 'model': ...}})")
    return obj


def _is_uri(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and "://" in path


def _resolve_uri(uri: str) -> str:
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(inner)
        if info.type == fs.FileType.Directory:
            child = f"{inner.rstrip('/')}/{CHECKPOINT_FILE}"
            if filesystem.get_file_info(child).type != fs.FileType.File:
                raise CheckpointError(f"{uri} is a directory without {CHECKPOINT_FILE}: expected a project "
                                      f"checkpoint directory or a checkpoint file")
            return f"{uri.rstrip('/')}/{CHECKPOINT_FILE}"
    except (OSError, ValueError) as e:  # pyarrow's errors subclass these
        raise CheckpointError(f"{uri}: cannot access the checkpoint ({_first_line(e)})") from e
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"checkpoint not found: {uri}")
    return uri


def _read_uri(uri: str) -> bytes:
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{uri}: cannot read the checkpoint ({_first_line(e)})") from e


def checkpoint_state_dict(checkpoint: Mapping[str, Any], *,
                          file: str = "checkpoint") -> tuple[dict[str, Any], Literal["official", "project"]]:
    """The model weights of a checkpoint dict in project key names, and which layout they came in."""
    if "format" in checkpoint:
        if checkpoint["format"] != PROJECT_FORMAT:
            raise CheckpointError(f"{file}: unsupported checkpoint format {checkpoint['format']!r}; this version "
                                  f"reads {PROJECT_FORMAT!r} and the authors' layout")
        state, layout = checkpoint.get("model"), "project"
    elif "state_dict" in checkpoint:
        state, layout = checkpoint["state_dict"], "official"
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint  # a bare state_dict (torch.save(model.state_dict()))
        layout = "official" if any(_OFFICIAL_PREFIX in k for k in checkpoint) else "project"
    else:
        raise CheckpointError(f"{file}: not a model checkpoint: top-level keys {_listed(list(checkpoint))}; "
                              f"expected 'state_dict' (the authors' layout) or 'format' + 'model' (this project's)")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: the model weights are not a mapping of tensors")
    if layout == "official":
        try:
            return official_to_project(state), layout
        except CheckpointError as e:
            raise CheckpointError(f"{file}: {e}") from e
    return dict(state), layout


def load_weights(model: torch.nn.Module, path: str | os.PathLike | Mapping[str, Any], *,
                 name: str | None = None) -> LoadReport:
    """Load a checkpoint into an ECO model strictly; returns a LoadReport.

    `path`: the authors' checkpoint file, a project checkpoint file or directory, or an already-read checkpoint
    dict (`name` then labels it in messages and the report). Every model tensor must come from the file with the same shape and every file tensor must land in the
    model; otherwise CheckpointError lists the missing, unexpected and mis-shaped keys (the file's names). The one
    allowed difference is the number of classes: then the backbone loads, `model.fc` is re-initialised, a warning
    is logged and the report says so. BatchNorm `num_batches_tracked` counters may be absent (older torch files);
    they do not affect the outputs (ECO's BatchNorm uses a fixed momentum).
    """
    if isinstance(path, Mapping):
        name, checkpoint = name or "<checkpoint dict>", path
    else:
        file = resolve_checkpoint_path(path)
        name, checkpoint = name or file, _read_resolved(file)
    state, layout = checkpoint_state_dict(checkpoint, file=name)

    expected = model.state_dict()
    head_keys = {k for k in expected if k.split(".")[0] == _HEAD}
    model_classes = int(expected[f"{_HEAD}.weight"].shape[0])
    file_head = state.get(f"{_HEAD}.weight")
    file_classes = int(file_head.shape[0]) if file_head is not None and file_head.dim() == 2 else model_classes
    reinit_head = (file_classes != model_classes and file_head is not None
                   and tuple(file_head.shape[1:]) == tuple(expected[f"{_HEAD}.weight"].shape[1:]))

    skip = head_keys if reinit_head else set()
    missing = [k for k in expected if k not in state and k not in skip]
    counters = tuple(k for k in missing if k.endswith(".num_batches_tracked"))
    missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{_file_key(k, layout)} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
                  for k in state if k in expected and k not in skip and state[k].shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"missing {_listed([_file_key(k, layout) for k in missing])}")
        if unexpected:
            problems.append(f"unexpected {_listed([_file_key(k, layout) for k in unexpected])}")
        if mis_shaped:
            problems.append(f"mis-shaped {_listed(mis_shaped)}")
        hint = _variant_hint(model, missing, unexpected)
        raise CheckpointError(f"{name} does not fit {type(model).__name__}({getattr(model, 'variant', '?')})"
                              f"{hint}: " + "; ".join(problems))

    to_load = {k: v for k, v in state.items() if k not in skip}
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != skip | set(counters):  # guards the checks above
        raise RuntimeError(f"{name}: load_state_dict disagreed with the key check: {result}")
    if reinit_head:
        if hasattr(model, "reset_head"):
            model.reset_head()
        else:
            model.get_submodule(_HEAD).reset_parameters()
        logger.warning("%s: checkpoint has %d classes, model has %d: backbone loaded, classifier re-initialised",
                       name, file_classes, model_classes)
    return LoadReport(path=name, layout=layout, loaded=len(to_load), checkpoint_num_classes=file_classes,
                      model_num_classes=model_classes, head_reinitialized=reinit_head, missing_counters=counters)


def model_from_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an ECO model from a project checkpoint (config["model"] + label_names) and load its weights.

    Returns (model in eval mode, the checkpoint dict). The authors' files carry no config: build the model with
    `eco_lite`/`eco_full(pretrained=...)` instead.
    """
    from pipeline.model.eco import ECO

    file = resolve_checkpoint_path(path)
    checkpoint = _read_resolved(file)
    if checkpoint.get("format") != PROJECT_FORMAT:
        raise CheckpointError(f"{file}: not a project checkpoint (no format {PROJECT_FORMAT!r}); for the authors' "
                              f"weights use eco_lite(pretrained=...) or eco_full(pretrained=...)")
    try:
        model_cfg = checkpoint["config"]["model"]
        num_classes = len(checkpoint["label_names"])
        model = ECO(variant=model_cfg["variant"], num_classes=num_classes,
                    num_segments=int(model_cfg["num_segments"]), dropout=float(model_cfg["dropout"]))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{file}: project checkpoint lacks config.model.variant/num_segments/dropout or "
                              f"label_names ({e!r})") from e
    load_weights(model, checkpoint, name=file)
    return model.eval(), checkpoint


def _file_key(project_key: str, layout: str) -> str:
    """Name a key as the file does, so that the user can find it with the file's own tools."""
    if layout != "official":
        return project_key
    try:
        return next(iter(project_to_official({project_key: None})))
    except CheckpointError:
        return project_key


def _variant_hint(model: torch.nn.Module, missing: list[str], unexpected: list[str]) -> str:
    if any(k.startswith("stream2d.") for k in unexpected) and getattr(model, "variant", None) == "lite":
        return " (the checkpoint is an ECO-Full one: build the model with eco_full)"
    if any(k.startswith("stream2d.") for k in missing) and getattr(model, "variant", None) == "full":
        return " (the checkpoint is an ECO-Lite one: build the model with eco_lite)"
    return ""


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
