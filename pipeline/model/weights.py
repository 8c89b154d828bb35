"""Loading weights into ECO strictly: a whole checkpoint (`load_weights`), or the authors' 2D + 3D starting files
(`load_init_weights`).

Checkpoints are read by `pipeline.model.checkpoint_io.read`, the one reader of both layouts (the authors' and this
project's); `load_weights` then checks every key and shape against the model and names whatever does not match
(timm's `checkpoint_filter_fn` pattern: translate with one pure function, then load strictly). A different number
of classes is the one expected gap: the backbone loads, the classifier is re-initialised, and the caller is told so.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

import pipeline.model.checkpoint_io as checkpoint_io
from pipeline.model.checkpoint_io import Checkpoint
from pipeline.model.keys import HEAD as _HEAD
from pipeline.model.keys import OFFICIAL_PREFIX as _OFFICIAL_PREFIX
from pipeline.model.keys import CheckpointError, official_key_to_project, project_to_official
from pipeline.model.keys import listed as _listed

logger = logging.getLogger(__name__)


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


def load_weights(model: torch.nn.Module, path: str | os.PathLike | Mapping[str, Any] | Checkpoint, *,
                 name: str | None = None) -> LoadReport:
    """Load a checkpoint into an ECO model strictly; returns a LoadReport.

    `path`: anything `checkpoint_io.read` reads (the authors' file, a project checkpoint file or directory, local
    or a URI), a Checkpoint already read, or a checkpoint dict in memory (`name` then labels it in messages and the
    report). Every model tensor must come from the file with the same shape and every file tensor must land in the
    model; otherwise CheckpointError lists the missing, unexpected and mis-shaped keys (the file's names). The one
    allowed difference is the number of classes: then the backbone loads, `model.fc` is re-initialised, a warning
    is logged and the report says so. BatchNorm `num_batches_tracked` counters may be absent (older torch files);
    they do not affect the outputs (ECO's BatchNorm uses a fixed momentum).
    """
    if isinstance(path, Checkpoint):
        checkpoint = path
    elif isinstance(path, Mapping):
        checkpoint = checkpoint_io.interpret(path, file=name or "<checkpoint dict>")
    else:
        checkpoint = checkpoint_io.read(path)
    name = name or checkpoint.file
    state, layout = checkpoint.state_dict, checkpoint.layout

    expected = model.state_dict()
    head_keys = {k for k in expected if k.split(".")[0] == _HEAD}
    model_classes = int(expected[f"{_HEAD}.weight"].shape[0])
    file_head = state[f"{_HEAD}.weight"]
    file_classes = checkpoint.num_classes
    reinit_head = (file_classes != model_classes
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
                              f"{hint}: " + "; ".join(problems), reason="does_not_fit")

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


# --- Starting where the authors started: TSN's 2D BN-Inception + a Kinetics 3D ResNet-18 ------------------------
#
# The authors' port (mzolfaghari/ECO-pytorch, main.py init_ECO, `--pretrained_parts both`) builds ECO's first
# weights from two files (ECO_REFERENCE.md, "The authors' initialisation"):
# - 2D: TSN's BN-Inception (`bninception_rgb_kinetics_init-d4ee618d3399.pth`), `state_dict` keys un-prefixed Caffe
#   names for the whole network (`conv1_7x7_s2.weight`, ..., `inception_5b_pool_proj_bn.running_var`, `fc.*`);
# - 3D: `C3DResNet18_rgb_16F_kinetics_v1.pth.tar`, keys `module.base_model.<caffe layer>.<param>` (`conv1`,
#   `res2a_1`, ..., `res5b_bn`, `fc8`), whose `res3a_2` takes 128 input channels where ECO's takes the 2D net's 96;
# every other key is initialised by name (BN weight 1, other weights Xavier uniform, biases 0). The port keeps
# whatever matches and silently re-initialises the rest; here the translation is one pure function per file that
# accounts for every ECO key and fails on a missing or mis-shaped one, naming it and the file.

InitSource = Literal["2d", "3d", "fresh"]
_INIT_3D_PREFIX = "module.base_model."
# ECO's res3a_2 sees the 2D net's 96 channels; the 3D file's res3a_2 sees 128 (the output of its res3a_1). The port
# keeps the first three of four chunks along the input channels: torch.cat(torch.chunk(w, 4, 1)[:3], 1).
_RES3A_2_WEIGHT = "net3d.res3.res3a_2.weight"
_RES3A_2_FILE_IN_CHANNELS = 128

# Groups for the report of unused keys, in network order. A group is a Caffe layer-name prefix.
_BNINCEPTION_GROUPS = ("conv1", "conv2", "inception_3a", "inception_3b", "inception_3c", "inception_4a",
                       "inception_4b", "inception_4c", "inception_4d", "inception_4e", "inception_5a", "inception_5b",
                       "fc")
_RESNET3D_GROUPS = ("conv1", "res2a", "res2b", "res3a", "res3b", "res4a", "res4b", "res5a", "res5b", "fc8")


@dataclass(frozen=True)
class UnusedGroup:
    """Keys of an init file that ECO does not take, by layer group (e.g. inception_4a..5b)."""

    groups: tuple[str, ...]  # consecutive groups of the file's network, e.g. ("inception_4a", ..., "inception_5b")
    keys: tuple[str, ...]  # the file's key names
    partial: bool = False  # the group's other keys are used (ECO-Lite takes 2 of inception_3c's 5 convs)

    @property
    def layers(self) -> tuple[str, ...]:
        """The Caffe layer names of the keys, in file order."""
        names = (k.removeprefix("module.").removeprefix("base_model.").partition(".")[0] for k in self.keys)
        return tuple(dict.fromkeys(names))

    @property
    def label(self) -> str:
        first, last = self.groups[0], self.groups[-1]
        text = first if len(self.groups) == 1 else f"{first}..{last[len(_group_family(last)):]}"  # inception_4a..5b
        return f"{text} (partly)" if self.partial else text


def _group_family(group: str) -> str:
    """"inception_4a" -> "inception_", "res2a" -> "res", "fc8" -> "fc"."""
    return group[: len(group) - len(group.lstrip("abcdefghijklmnopqrstuvwxyz_"))]


@dataclass(frozen=True)
class InitReport:
    """Where every ECO tensor came from when starting from the authors' 2D and 3D files."""

    file_2d: str | None
    file_3d: str | None
    sources: dict[str, InitSource]  # every ECO state_dict key -> "2d" | "3d" | "fresh", in the model's order
    unused_2d: tuple[UnusedGroup, ...] = ()
    unused_3d: tuple[UnusedGroup, ...] = ()
    sliced: tuple[str, ...] = ()  # notes on tensors loaded in part (res3a_2.weight)

    def keys_from(self, source: InitSource) -> tuple[str, ...]:
        return tuple(k for k, s in self.sources.items() if s == source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (`eco model-info --json`): counts per source, fresh keys, unused keys per group."""
        return {"file_2d": self.file_2d, "file_3d": self.file_3d, "loaded_2d": len(self.keys_from("2d")),
                "loaded_3d": len(self.keys_from("3d")), "fresh": list(self.keys_from("fresh")),
                "unused_2d": {g.label: len(g.keys) for g in self.unused_2d},
                "unused_3d": {g.label: len(g.keys) for g in self.unused_3d}, "sliced": list(self.sliced)}

    def describe(self) -> str:
        """Several lines: what each file gave, what of it is unused (by group), what starts fresh and how."""
        lines = []
        for source, file, unused, part in (("2d", self.file_2d, self.unused_2d, "2D BN-Inception"),
                                           ("3d", self.file_3d, self.unused_3d, "3D ResNet-18")):
            if file is None:
                continue
            lines.append(f"{part} {file}: {len(self.keys_from(source))} ECO tensors loaded")
            if source == "3d":
                lines.extend(f"  {note}" for note in self.sliced)
            if unused:
                groups = ", ".join(f"{g.label} {len(g.keys)}" + (f" [{', '.join(g.layers)}]" if g.partial else "")
                                   for g in unused)
                lines.append(f"  unused: {sum(len(g.keys) for g in unused)} keys ({groups})")
        fresh = self.keys_from("fresh")
        counters = [k for k in fresh if k.endswith(".num_batches_tracked")]
        named = [k for k in fresh if k not in counters]
        lines.append(f"initialised fresh (authors' rule: BatchNorm weight 1, other weights Xavier uniform, biases 0): "
                     f"{len(named)} tensors" + (f": {_listed(_collapse_layers(named))}" if named else ""))
        if counters:
            lines.append(f"  and {len(counters)} BatchNorm num_batches_tracked counters (0; not in files of that era)")
        return "\n".join(lines)


def bninception_to_project(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], *,
                           file: str) -> tuple[dict[str, torch.Tensor], tuple[UnusedGroup, ...]]:
    """TSN's BN-Inception (un-prefixed Caffe names) -> ECO's 2D tensors (net2d.*, and stream2d.* of ECO-Full).

    `expected`: ECO's state_dict shapes. Returns (ECO key -> the file's tensor, the file's unused keys by group).
    Every 2D tensor of ECO must be in the file with ECO's shape (BatchNorm num_batches_tracked may be absent: files
    of that era have none); otherwise CheckpointError names the key and the file.
    """
    needed = {k: v for k, v in expected.items() if k.startswith(("net2d.", "stream2d."))}
    out: dict[str, torch.Tensor] = {}
    used_file_keys: set[str] = set()
    for key, value in state_dict.items():
        target = official_key_to_project(_OFFICIAL_PREFIX + key)  # the names ECO's own checkpoints use
        if target in needed:
            out[target] = value
            used_file_keys.add(key)
    _check_needed(needed, out, lambda k: ".".join(k.split(".")[-2:]), file, "2D BN-Inception",
                  hint=_layout_hint_2d(state_dict))
    return out, _unused_groups(state_dict, used_file_keys, _BNINCEPTION_GROUPS)


def resnet3d18_to_project(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], *,
                          file: str) -> tuple[dict[str, torch.Tensor], tuple[UnusedGroup, ...]]:
    """The Kinetics 3D ResNet-18 (`module.base_model.<caffe layer>.<param>`) -> ECO's 3D tensors (net3d.*).

    `res3a_2.weight` keeps the first 96 of its 128 input channels (the authors' torch.chunk(w, 4, 1)[:3]); conv1,
    res2, res3a_1/res3a_down and fc8 are unused (ECO's 2D net replaces them). Returns (ECO key -> tensor, the
    file's unused keys by group); a missing or mis-shaped ECO tensor raises CheckpointError naming key and file.
    """
    needed = {k: v for k, v in expected.items() if k.startswith("net3d.")}
    out: dict[str, torch.Tensor] = {}
    used_file_keys: set[str] = set()
    for key, value in state_dict.items():
        inner = key.removeprefix("module.")
        if not re.match(r"base_model\.res[345][ab]_", inner):
            continue
        target = official_key_to_project(inner)
        if target not in needed:
            continue  # res3a_1, res3a_1_bn, res3a_down: ECO's res3 starts at res3a_2
        if target == _RES3A_2_WEIGHT:
            want = (needed[target][0], _RES3A_2_FILE_IN_CHANNELS, *needed[target][2:])
            if tuple(value.shape) != want:
                raise CheckpointError(f"{file}: {key} has shape {tuple(value.shape)}, expected {want} (the 3D "
                                      f"ResNet-18's res3a_2, of which ECO keeps the first {needed[target][1]} input "
                                      f"channels)")
            value = value[:, : needed[target][1]]  # (128, 128, 3, 3, 3) -> (128, 96, 3, 3, 3)
        out[target] = value
        used_file_keys.add(key)
    _check_needed(needed, out, lambda k: _INIT_3D_PREFIX + ".".join(k.split(".")[-2:]), file, "3D ResNet-18",
                  hint=_layout_hint_3d(state_dict))
    return out, _unused_groups(state_dict, used_file_keys, _RESNET3D_GROUPS)


def plan_init(expected: Mapping[str, tuple[int, ...]], *, state_2d: Mapping[str, torch.Tensor] | None = None,
              state_3d: Mapping[str, torch.Tensor] | None = None, file_2d: str | None = None,
              file_3d: str | None = None) -> tuple[dict[str, torch.Tensor], InitReport]:
    """Account for every ECO key: loaded from the 2D file, from the 3D file, or fresh. Pure: no model, no I/O.

    `expected`: ECO's state_dict shapes (a meta-device model's will do). Returns (ECO key -> tensor to load, the
    report). A part whose file is not given starts fresh by the authors' rule, as their `--pretrained_parts 2D/3D`.
    """
    state: dict[str, torch.Tensor] = {}
    unused_2d: tuple[UnusedGroup, ...] = ()
    unused_3d: tuple[UnusedGroup, ...] = ()
    sliced: tuple[str, ...] = ()
    if state_2d is not None:
        loaded, unused_2d = bninception_to_project(state_2d, expected, file=file_2d or "2D file")
        state.update(loaded)
    sources: dict[str, InitSource] = {k: "2d" for k in state}
    if state_3d is not None:
        loaded, unused_3d = resnet3d18_to_project(state_3d, expected, file=file_3d or "3D file")
        overlap = sorted(set(loaded) & set(state))
        if overlap:  # the prefixes make this impossible; a guard against a future mapping change
            raise CheckpointError(f"keys loaded from both files: {_listed(overlap)}")
        state.update(loaded)
        sources.update({k: "3d" for k in loaded})
        if _RES3A_2_WEIGHT in loaded:
            sliced = (f"res3a_2.weight: the first {expected[_RES3A_2_WEIGHT][1]} of the file's "
                      f"{_RES3A_2_FILE_IN_CHANNELS} input channels (the authors' chunk(4)[:3])",)
    report = InitReport(file_2d=file_2d if state_2d is not None else None,
                        file_3d=file_3d if state_3d is not None else None,
                        sources={k: sources.get(k, "fresh") for k in expected}, unused_2d=unused_2d,
                        unused_3d=unused_3d, sliced=sliced)
    return state, report


def read_init_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read an init file (local path or URI) safely: its `state_dict`, or the file itself when it is a bare
    state_dict. Returns (state_dict, the resolved file name for messages)."""
    obj, file = checkpoint_io.read_dict(path, prefer=checkpoint_io.CHECKPOINT_FILE)
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: not a weights file: expected {{'state_dict': {{name: tensor}}}} or a bare "
                              f"state_dict; top-level keys {_listed([str(k) for k in obj])}")
    return dict(state), file


def init_report(model: torch.nn.Module, *, init_2d: str | os.PathLike | None = None,
                init_3d: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], InitReport]:
    """Read the files and plan the initialisation of `model` (meta-device models work: only shapes are read)."""
    if init_2d is None and init_3d is None:
        raise ValueError("give init_2d and/or init_3d")
    state_2d, file_2d = read_init_state_dict(init_2d) if init_2d is not None else (None, None)
    state_3d, file_3d = read_init_state_dict(init_3d) if init_3d is not None else (None, None)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return plan_init(expected, state_2d=state_2d, state_3d=state_3d, file_2d=file_2d, file_3d=file_3d)


def load_init_weights(model: torch.nn.Module, *, init_2d: str | os.PathLike | None = None,
                      init_3d: str | os.PathLike | None = None) -> InitReport:
    """Start `model` (ECO) where the authors started: 2D trunk from TSN's BN-Inception file, 3D part from the 3D
    ResNet-18 file, every other tensor fresh by the authors' rule (the classifier always). Returns the report.

    Either file may be omitted (that part then starts fresh). Files are read with weights_only=True; a missing or
    mis-shaped tensor raises CheckpointError naming the key and the file.
    """
    state, report = init_report(model, init_2d=init_2d, init_3d=init_3d)
    fresh = set(report.keys_from("fresh"))
    init_fresh(model, fresh)
    result = model.load_state_dict(state, strict=False)
    # BatchNorm fills an absent num_batches_tracked with 0 itself (torch's old-checkpoint path): not "missing".
    fresh_params = {k for k in fresh if not k.endswith(".num_batches_tracked")}
    if result.unexpected_keys or set(result.missing_keys) != fresh_params:  # guards plan_init's accounting
        raise RuntimeError(f"load_state_dict disagreed with the init plan: {result}")
    return report


def init_fresh(model: torch.nn.Module, keys: set[str] | frozenset[str]) -> None:
    """The authors' rule for tensors no file provides (main.py, un_init_dict_keys): BatchNorm weight 1, other
    weights Xavier uniform, biases 0. BatchNorm running statistics get torch's defaults (mean 0, var 1, count 0):
    the port zero-fills them, a running variance of 0 that only matters before the first training step."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key in keys:
            owner, _, name = key.rpartition(".")
            module = modules[owner]
            tensor = getattr(module, name)
            is_bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            if name == "weight" and is_bn:
                tensor.fill_(1.0)
            elif name == "weight":
                torch.nn.init.xavier_uniform_(tensor)
            elif name in ("bias", "running_mean", "num_batches_tracked"):
                tensor.zero_()
            elif name == "running_var":
                tensor.fill_(1.0)
            else:
                raise RuntimeError(f"no initialisation rule for {key}")  # ECO has no other tensors


def _check_needed(needed: Mapping[str, tuple[int, ...]], found: Mapping[str, torch.Tensor], file_key, file: str,
                  part: str, hint: str) -> None:
    missing = [file_key(k) for k in needed if k not in found and not k.endswith(".num_batches_tracked")]
    mis_shaped = [f"{file_key(k)} {tuple(v.shape)} (ECO {tuple(needed[k])})" for k, v in found.items()
                  if tuple(v.shape) != tuple(needed[k])]
    if missing or mis_shaped:
        problems = ([f"missing {_listed(missing)}"] if missing else []) + (
            [f"mis-shaped {_listed(mis_shaped)}"] if mis_shaped else [])
        raise CheckpointError(f"{file} does not fit ECO's {part} part{hint}: " + "; ".join(problems))


def _layout_hint_2d(state_dict: Mapping[str, Any]) -> str:
    if any(k.startswith(("module.", "base_model.")) for k in state_dict):
        return (" (its keys are prefixed, e.g. 'module.base_model.': the 2D file has TSN's un-prefixed Caffe names; "
                "a whole ECO checkpoint goes to model.pretrained)")
    return ""


def _layout_hint_3d(state_dict: Mapping[str, Any]) -> str:
    if not any(k.removeprefix("module.").startswith("base_model.") for k in state_dict):
        return " (expected keys 'module.base_model.<caffe layer>.<param>', as in C3DResNet18_rgb_16F_kinetics_v1)"
    return ""


def _unused_groups(state_dict: Mapping[str, Any], used: set[str],
                   order: tuple[str, ...]) -> tuple[UnusedGroup, ...]:
    """The file's unused keys by layer group; runs of wholly unused consecutive groups of one family
    (inception_4a..5b, res2a..2b) are merged."""
    by_group: dict[str, list[str]] = {}
    partial: set[str] = set()
    other: list[str] = []
    for key in state_dict:
        layer = key.removeprefix("module.").removeprefix("base_model.").partition(".")[0]
        group = next((g for g in order if layer == g or layer.startswith(g + "_")), None)
        if group is None:
            if key not in used:
                other.append(key)
            continue
        if key in used:
            partial.add(group)
        else:
            by_group.setdefault(group, []).append(key)
    runs: list[UnusedGroup] = []
    for group in order:
        if group not in by_group:
            continue
        keys, is_partial = tuple(by_group[group]), group in partial
        last = runs[-1] if runs else None
        if (last is not None and not last.partial and not is_partial
                and order.index(last.groups[-1]) == order.index(group) - 1
                and _group_family(last.groups[-1]) == _group_family(group)):
            runs[-1] = UnusedGroup(groups=last.groups + (group,), keys=last.keys + keys)
        else:
            runs.append(UnusedGroup(groups=(group,), keys=keys, partial=is_partial))
    if other:
        runs.append(UnusedGroup(groups=("other",), keys=tuple(other)))
    return tuple(runs)


def _collapse_layers(keys: list[str]) -> list[str]:
    """`fc.weight`, `fc.bias` -> `fc.{weight,bias}`: shorter lists of fresh tensors."""
    layers: dict[str, list[str]] = {}
    for key in keys:
        owner, _, name = key.rpartition(".")
        layers.setdefault(owner, []).append(name)
    return [f"{o}.{n[0]}" if len(n) == 1 else f"{o}.{{{','.join(n)}}}" for o, n in layers.items()]
