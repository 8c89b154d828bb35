"""ECO's 3D net: conv3_x..conv5_x of a 3D ResNet-18 with the wiring of the authors' Caffe model.

It differs from torchvision's `BasicBlock` (ECO_REFERENCE.md, ECOfull.yaml "3D-Net"):
- BatchNorm + ReLU come after each residual sum, and the sums add raw (pre-BatchNorm) conv outputs;
- the stride-2 shortcut (`res4a_down`, `res5a_down`) is a 3x3x3 conv with bias and no BatchNorm;
- every Conv3d is 3x3x3, padding 1, with a bias.
Parameter names are the Caffe layer names (`res3a_2`, `res4a_down`, `res5b_bn`, ...).

Shapes for T=16 frames at 224 px: input (N, 96, 16, 28, 28) -> res3 (N, 128, 16, 28, 28) -> res4 (N, 256, 8, 14, 14)
-> res5 (N, 512, 4, 7, 7). Any T and size work: each stride-2 stage gives ceil(d/2) along T, H and W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Stage3DSpec:
    name: str  # Caffe prefix: "res3", "res4", "res5"
    in_channels: int
    out_channels: int


RES3 = Stage3DSpec("res3", 96, 128)
RES4 = Stage3DSpec("res4", 128, 256)
RES5 = Stage3DSpec("res5", 256, 512)


def _conv3d(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=True)


def _bn3d(ch: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(ch, eps=1e-5, momentum=0.1)


class Res3(nn.Module):
    """res3: a 3x3x3 conv (the 2D net's 96 channels -> 128), then one residual block; resolution unchanged."""

    def __init__(self, spec: Stage3DSpec = RES3) -> None:
        super().__init__()
        cin, c = spec.in_channels, spec.out_channels
        self.res3a_2 = _conv3d(cin, c)
        self.res3a_bn = _bn3d(c)
        self.res3b_1 = _conv3d(c, c)
        self.res3b_1_bn = _bn3d(c)
        self.res3b_2 = _conv3d(c, c)
        self.res3b_bn = _bn3d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.res3a_2(x)  # raw conv output: the residual of the block below
        y = F.relu(self.res3a_bn(r), inplace=True)
        y = F.relu(self.res3b_1_bn(self.res3b_1(y)), inplace=True)
        s = self.res3b_2(y) + r
        return F.relu(self.res3b_bn(s), inplace=True)


class DownStage3D(nn.Module):
    """res4 / res5: a stride-2 residual block (conv shortcut without BN), then an identity residual block.

    The `b` block adds the raw sum `a` of the `a` block (pre-BatchNorm), as in the Caffe model.
    """

    def __init__(self, spec: Stage3DSpec) -> None:
        super().__init__()
        self.prefix = spec.name
        p, cin, c = spec.name, spec.in_channels, spec.out_channels
        self.add_module(f"{p}a_1", _conv3d(cin, c, stride=2))
        self.add_module(f"{p}a_1_bn", _bn3d(c))
        self.add_module(f"{p}a_2", _conv3d(c, c))
        self.add_module(f"{p}a_down", _conv3d(cin, c, stride=2))
        self.add_module(f"{p}a_bn", _bn3d(c))
        self.add_module(f"{p}b_1", _conv3d(c, c))
        self.add_module(f"{p}b_1_bn", _bn3d(c))
        self.add_module(f"{p}b_2", _conv3d(c, c))
        self.add_module(f"{p}b_bn", _bn3d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self._layer
        y = F.relu(layer("a_1_bn")(layer("a_1")(x)), inplace=True)
        a = layer("a_2")(y) + layer("a_down")(x)
        y = F.relu(layer("a_bn")(a), inplace=True)
        y = F.relu(layer("b_1_bn")(layer("b_1")(y)), inplace=True)
        b = layer("b_2")(y) + a
        return F.relu(layer("b_bn")(b), inplace=True)

    def _layer(self, suffix: str) -> nn.Module:
        return getattr(self, f"{self.prefix}{suffix}")


class ECO3D(nn.Module):
    """(N, 96, T, h, w) -> (N, 512, ceil(T/4), ceil(h/4), ceil(w/4))."""

    out_channels = RES5.out_channels

    def __init__(self) -> None:
        super().__init__()
        self.res3 = Res3(RES3)
        self.res4 = DownStage3D(RES4)
        self.res5 = DownStage3D(RES5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res3(x)  # (N, 128, T, h, w)
        x = self.res4(x)  # (N, 256, T/2, h/2, w/2)
        return self.res5(x)  # (N, 512, T/4, h/4, w/4)
