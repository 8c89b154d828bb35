"""The authors' checkpoint key names <-> this project's: one pure, tested translation (timm's checkpoint_filter_fn).

The authors' files (`ECO_Lite_rgb_model_Kinetics.pth.tar` and the ECO-Full ones) name parameters
`module.base_model.<caffe layer>.<param>` and `module.new_fc.<param>`; ours name the same layers inside the ECO
submodule that owns them (`net2d.inception_a.inception_3a_1x1.weight`). This module is a leaf: no torch, no model,
no files; pipeline.model.weights reads files and loads models with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

HEAD = "fc"  # the classifier of `pipeline.model.eco.ECO`
_MAX_LISTED = 12  # keys listed per category in an error message


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys.

    `reason` names the refusal for programs, the same whichever entry point read the file: "unreadable",
    "unsafe", "not_a_checkpoint", "unsupported_format", "unknown_keys", "incomplete", "does_not_fit",
    "not_resumable".
    """

    def __init__(self, message: str, *, reason: str = "does_not_fit"):
        super().__init__(message)
        self.reason = reason

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
OFFICIAL_PREFIX = "base_model."
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
        new_key = official_key_to_project(key)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in out:
            raise CheckpointError(f"two checkpoint keys map to {new_key!r} (the second is {key!r})",
                                  reason="unknown_keys")
        out[new_key] = value
    if unknown:
        raise CheckpointError(f"unknown keys in the authors' checkpoint layout: {listed(unknown)}; expected "
                              f"'module.base_model.<caffe layer>.<param>' or 'module.new_fc.<param>'",
                              reason="unknown_keys")
    return out


def project_to_official(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `official_to_project`: this project's names -> `module.base_model.<layer>.<param>`."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == HEAD and len(parts) == 2:
            out[f"module.new_fc.{parts[1]}"] = value
        elif len(parts) >= 3 and official_key_to_project(f"{OFFICIAL_PREFIX}{parts[-2]}.{parts[-1]}") == key:
            out[f"module.{OFFICIAL_PREFIX}{parts[-2]}.{parts[-1]}"] = value
        else:
            raise CheckpointError(f"key {key!r} has no counterpart in the authors' checkpoint layout",
                                  reason="unknown_keys")
    return out


def official_key_to_project(key: str) -> str | None:
    """Our name for one of the authors' keys, or None if it names no known layer."""
    k = key.removeprefix("module.")
    for head in _OFFICIAL_HEADS:
        if k.startswith(head):
            param = k[len(head):]
            return f"{HEAD}.{param}" if param and "." not in param else None
    if not k.startswith(OFFICIAL_PREFIX):
        return None
    layer, _, param = k[len(OFFICIAL_PREFIX):].partition(".")
    if not param or "." in param:
        return None
    for pattern, owner in _LAYER_OWNERS:
        m = pattern.match(layer)
        if m:
            return f"{m.expand(owner)}.{layer}.{param}"
    return None


def listed(items: list[str]) -> str:
    """The first keys of `items`, and how many more: key lists in error messages stay readable."""
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")
