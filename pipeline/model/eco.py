"""ECO-Lite and ECO-Full (Zolfaghari et al., "ECO: Efficient Convolutional Network for Online Video
Understanding", ECCV 2018, arXiv 1804.09066, Fig. 2).

    frames (N, T, 3, H, W) -> shared 2D net per frame -> (N*T, 96, H/8, W/8)
        -> reshape to (N, 96, T, H/8, W/8) -> 3D ResNet stages -> global average pool -> 512
    ECO-Full only: the rest of BN-Inception per frame -> (N*T, 1024) -> average over T -> 1024,
        concatenated before the 3D features (authors' ECOfull.yaml: Concat(2D consensus, 3D pool)) -> 1536
    -> dropout -> Linear(feature_dim, num_classes)

The global pools average over whatever remains, so any T >= 1 and any input size from 112 px up work; for T a
multiple of 4 at 224 px this is exactly the authors' AvgPool3d((T/4, 7, 7)) (and, for ECO-Full, AvgPool2d(7) then
the average over T).

Input space of the official Kinetics weights: BGR, 0-255, mean (B 104, G 117, R 128), std 1 (docs/model.md).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch
from torch import nn

from pipeline.model.bninception import ECO2D, BNInceptionTail
from pipeline.model.resnet3d import ECO3D
from pipeline.model.weights import load_init_weights, load_weights

logger = logging.getLogger(__name__)

Variant = Literal["lite", "full"]
VARIANTS: tuple[Variant, ...] = ("lite", "full")


class ECO(nn.Module):
    """ECO video classifier. `forward(x: float (N, T, 3, H, W)) -> logits (N, num_classes)`.

    Attributes: `variant` ("lite" / "full"), `num_classes`, `num_segments` (the T the data pipeline samples for
    this model; `forward` accepts any T), `feature_dim` (512 / 1536), `fc` (the classifier).
    """

    def __init__(self, *, variant: Variant, num_classes: int, num_segments: int, dropout: float) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if num_classes < 1 or num_segments < 1:
            raise ValueError(f"num_classes and num_segments must be >= 1, got {num_classes} and {num_segments}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.variant: Variant = variant
        self.num_classes = num_classes
        self.num_segments = num_segments

        self.net2d = ECO2D()
        self.net3d = ECO3D()
        self.stream2d = BNInceptionTail() if variant == "full" else None
        self.feature_dim = ECO3D.out_channels + (BNInceptionTail.out_channels if self.stream2d is not None else 0)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) -> (N, feature_dim): the classifier's input, after pooling, before dropout."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"ECO expects a float tensor (N, T, 3, H, W), got shape {tuple(x.shape)}")
        n, t = x.shape[0], x.shape[1]
        frames = x.flatten(0, 1)  # (N*T, 3, H, W)
        x3b, y = self.net2d.forward_with_3b(frames)  # (N*T, 320, h, w), (N*T, 96, h, w); h = H/8
        c, h, w = y.shape[1:]
        # A free view: with a channels_last 2D net, (N, C, T, h, w) comes out channels_last_3d.
        clip = y.view(n, t, c, h, w).transpose(1, 2)  # (N, 96, T, h, w)
        f3d = self.net3d(clip)  # (N, 512, T/4, h/4, w/4)
        f3d = f3d.mean(dim=(2, 3, 4))  # (N, 512)
        if self.stream2d is None:
            return f3d
        f2d = self.stream2d(x3b, y)  # (N*T, 1024, h/4, w/4)
        f2d = f2d.mean(dim=(2, 3)).view(n, t, -1).mean(dim=1)  # (N*T, 1024) -> (N, T, 1024) -> (N, 1024)
        return torch.cat([f2d, f3d], dim=1)  # (N, 1536), 2D first as in the authors' concat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))  # (N, num_classes)

    def reset_head(self, num_classes: int | None = None) -> None:
        """Re-initialise the classifier (optionally with a new number of classes), e.g. for fine-tuning."""
        if num_classes is not None and num_classes != self.num_classes:
            w = self.fc.weight
            self.fc = nn.Linear(self.feature_dim, num_classes, device=w.device, dtype=w.dtype)
            self.num_classes = num_classes
        _init_weights(self.fc)

    def to_channels_last(self) -> ECO:
        """Convert the 2D convs to channels_last and the 3D convs to channels_last_3d (in place); returns self.

        `Module.to(memory_format=torch.channels_last_3d)` alone fails on the 4-D conv weights of the 2D net.
        Inputs need no conversion: the first conv's output follows its weight's layout.
        """
        self.net2d.to(memory_format=torch.channels_last)
        if self.stream2d is not None:
            self.stream2d.to(memory_format=torch.channels_last)
        self.net3d.to(memory_format=torch.channels_last_3d)
        return self

    def extra_repr(self) -> str:
        return f"variant={self.variant}, num_classes={self.num_classes}, num_segments={self.num_segments}"


def _init_weights(m: nn.Module) -> None:
    # From-scratch init (the authors start from ImageNet / Kinetics weights instead): He init for the ReLU convs,
    # BatchNorm as identity, and the authors' init for the new classifier (xavier_uniform_, zero bias; models.py).
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def _build(variant: Variant, num_classes: int, num_segments: int, dropout: float,
           pretrained: str | os.PathLike | None, init_2d: str | os.PathLike | None,
           init_3d: str | os.PathLike | None) -> ECO:
    if pretrained is not None and (init_2d is not None or init_3d is not None):
        # A whole ECO checkpoint already holds every tensor; the 2D/3D files are for starting without one.
        raise ValueError("pretrained (a whole ECO checkpoint) cannot be combined with init_2d/init_3d (the authors' "
                         "separate 2D and 3D starting files): give one or the other")
    model = ECO(variant=variant, num_classes=num_classes, num_segments=num_segments, dropout=dropout)
    if pretrained is not None:
        report = load_weights(model, pretrained)
        logger.info("%s", report.describe())
    elif init_2d is not None or init_3d is not None:
        report = load_init_weights(model, init_2d=init_2d, init_3d=init_3d)
        logger.info("ECO-%s initialised as the authors did:\n%s", variant.capitalize(), report.describe())
    return model


def eco_lite(*, num_classes: int = 400, num_segments: int = 16, dropout: float = 0.3,
             pretrained: str | os.PathLike | None = None, init_2d: str | os.PathLike | None = None,
             init_3d: str | os.PathLike | None = None) -> ECO:
    """ECO-Lite: 37,503,856 parameters at 400 classes.

    `pretrained`: the authors' checkpoint (`ECO_Lite_rgb_model_Kinetics.pth.tar` layout) or one of this project's
    (a directory with checkpoint.pt, or the file). Loading is strict; with a different `num_classes` the backbone
    loads and only the classifier is re-initialised (logged as a warning). Dropout 0.3 is the authors' Kinetics
    setting (0.6 for UCF101 fine-tuning).

    `init_2d` / `init_3d` (instead of `pretrained`): start where the authors' Kinetics training started, from TSN's
    BN-Inception file for the 2D trunk and a Kinetics 3D ResNet-18 file for the 3D part; every other tensor (the
    classifier always) is initialised fresh by the authors' rule. See `pipeline.model.weights.load_init_weights`.
    """
    return _build("lite", num_classes, num_segments, dropout, pretrained, init_2d, init_3d)


def eco_full(*, num_classes: int = 400, num_segments: int = 16, dropout: float = 0.3,
             pretrained: str | os.PathLike | None = None, init_2d: str | os.PathLike | None = None,
             init_3d: str | os.PathLike | None = None) -> ECO:
    """ECO-Full: ECO-Lite plus the per-frame BN-Inception stream; 47,502,128 parameters at 400 classes.

    `pretrained` as in `eco_lite` (the authors' ECOfull checkpoints: `module.base_model.*` + `module.new_fc.*`
    with 1536 inputs). `init_2d` / `init_3d` as in `eco_lite`; the second 2D stream (the rest of BN-Inception)
    takes its weights from the same 2D file.
    """
    return _build("full", num_classes, num_segments, dropout, pretrained, init_2d, init_3d)


# The builder of each variant (config's `model.variant`, a checkpoint's): the one place a variant name becomes a model.
BUILDERS = {"lite": eco_lite, "full": eco_full}
