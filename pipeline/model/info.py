"""`eco model-info`: parameter counts, forward GMACs per clip and output shape of ECO-Lite / ECO-Full, and where
each tensor comes from when starting from the authors' 2D and 3D files."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.model.eco import ECO, VARIANTS
from pipeline.model.weights import InitReport, init_report


def model_info(variant: str = "lite", num_segments: int = 16, size: int = 224,
               num_classes: int = 400) -> dict[str, Any]:
    """Parameters and forward compute of one clip (1, T, 3, size, size).

    GMACs come from PyTorch's flop counter (`torch.utils.flop_counter.FlopCounterMode`: convolutions and the
    classifier; BatchNorm, pooling and ReLU are not counted), GMACs = FLOPs / 2 / 1e9. ECO-Lite 16 frames at 224 px:
    46.5 GMACs; ECO-Full: 64.4 (ECO_REFERENCE.md). Runs on the meta device: no memory, no weights, milliseconds.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px (112 and up is the supported range), got {size}")
    with torch.device("meta"):
        model = ECO(variant=variant, num_classes=num_classes, num_segments=num_segments, dropout=0.0).eval()
        clip = torch.empty(1, num_segments, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits = model(clip)

    def count(module: torch.nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    return {
        "variant": variant,
        "num_segments": num_segments,
        "size": size,
        "num_classes": num_classes,
        "params": count(model),
        "params_2d": count(model.net2d) + count(model.stream2d),
        "params_3d": count(model.net3d),
        "params_head": count(model.fc),
        "gmacs": counter.get_total_flops() / 2 / 1e9,
        "output_shape": list(logits.shape),
    }


def init_info(variant: str = "lite", num_classes: int = 400, *, init_2d: str | None = None,
              init_3d: str | None = None) -> InitReport:
    """Where each ECO tensor would come from when starting from the authors' 2D and 3D files (`eco model-info
    --init-2d F --init-3d G`): the files are read and checked key by key against a meta-device model; nothing is
    trained or allocated. Raises CheckpointError naming the key and file on a missing or mis-shaped tensor."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    with torch.device("meta"):
        model = ECO(variant=variant, num_classes=num_classes, num_segments=16, dropout=0.0)
    return init_report(model, init_2d=init_2d, init_3d=init_3d)[1]
