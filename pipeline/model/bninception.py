"""The per-frame 2D network of ECO: BN-Inception (Inception-v2, Ioffe & Szegedy 2015) with Caffe layer names.

ECO-Lite uses the trunk up to the `double_3x3_1` branch of inception_3c (`ECO2D`: the seed's BasicConv,
InceptionA, InceptionB, InceptionC), output (N*T, 96, H/8, W/8). ECO-Full also runs the rest of BN-Inception on
every frame (`BNInceptionTail`: the other branches of inception_3c, inception_4a..4e, 5a, 5b), output
(N*T, 1024, H/32, W/32).

Every parameter path ends in the authors' Caffe layer name (`inception_3a_1x1`, `inception_3a_1x1_bn`, ...), so the
official checkpoints map onto this module by their last two key components (see `pipeline.model.weights`).
Semantics follow the authors' port (mzolfaghari/ECO-pytorch, tf_model_zoo/*/layer_factory.py): every conv has a
bias and is followed by BatchNorm (eps 1e-5) and ReLU; all pools use Caffe's ceil mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _add_conv_bn(module: nn.Module, name: str, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> int:
    """Register `name` (Conv2d with bias, 'same' padding) and `name_bn` (BatchNorm2d) on `module`."""
    module.add_module(name, nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=True))
    module.add_module(f"{name}_bn", nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1))
    return out_ch


def _conv_bn_relu(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    conv = getattr(module, name)
    bn = getattr(module, f"{name}_bn")
    return F.relu(bn(conv(x)), inplace=True)


def _stride2_max_pool(x: torch.Tensor) -> torch.Tensor:
    """The pooled branch of the stride-2 Inception blocks (3c, 4e): 3x3/2 max pool, Caffe ceil mode.

    Caffe (and the authors' port) pool with no padding. At even feature sizes (every size the authors trained,
    e.g. 28 and 14 at 224 px) that gives the same H/2 as the padded stride-2 convs beside it. At odd sizes it
    would give (H-1)/2 against the convs' (H+1)/2 and the concat would fail; there we pad that dimension by one
    (max pools pad with -inf), which yields (H+1)/2 and keeps every window inside the image. any input
    size from 112 up must work.
    """
    pad = (x.shape[-2] % 2, x.shape[-1] % 2)
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=pad, ceil_mode=True)


@dataclass(frozen=True)
class InceptionSpec:
    """Channel table of one BN-Inception block (Caffe: bn_inception.prototxt; ECOfull.yaml)."""

    name: str  # Caffe prefix, e.g. "inception_4a"
    in_channels: int
    conv_1x1: int  # 0 = no 1x1 branch (the stride-2 blocks)
    reduce_3x3: int
    conv_3x3: int
    reduce_double: int
    conv_double: int
    pool: Literal["avg", "max", "max_stride2"]
    pool_proj: int  # 0 = the pooled input is concatenated as is (the stride-2 blocks)

    @property
    def stride(self) -> int:
        return 2 if self.pool == "max_stride2" else 1

    @property
    def out_channels(self) -> int:
        pooled = self.pool_proj if self.pool_proj else self.in_channels
        return self.conv_1x1 + self.conv_3x3 + self.conv_double + pooled


INCEPTION_3A = InceptionSpec("inception_3a", 192, 64, 64, 64, 64, 96, "avg", 32)  # -> 256
INCEPTION_3B = InceptionSpec("inception_3b", 256, 64, 64, 96, 64, 96, "avg", 64)  # -> 320
INCEPTION_3C = InceptionSpec("inception_3c", 320, 0, 128, 160, 64, 96, "max_stride2", 0)  # -> 576
INCEPTION_4A = InceptionSpec("inception_4a", 576, 224, 64, 96, 96, 128, "avg", 128)  # -> 576
INCEPTION_4B = InceptionSpec("inception_4b", 576, 192, 96, 128, 96, 128, "avg", 128)  # -> 576
INCEPTION_4C = InceptionSpec("inception_4c", 576, 160, 128, 160, 128, 160, "avg", 128)  # -> 608
INCEPTION_4D = InceptionSpec("inception_4d", 608, 96, 128, 192, 160, 192, "avg", 128)  # -> 608
INCEPTION_4E = InceptionSpec("inception_4e", 608, 0, 128, 192, 192, 256, "max_stride2", 0)  # -> 1056
INCEPTION_5A = InceptionSpec("inception_5a", 1056, 352, 192, 320, 160, 224, "avg", 128)  # -> 1024
# BN-Inception's last block max-pools (3x3/1) where the others average: kept as in the original network.
INCEPTION_5B = InceptionSpec("inception_5b", 1024, 352, 192, 320, 192, 224, "max", 128)  # -> 1024


class BasicConv(nn.Module):
    """conv1 + conv2 of BN-Inception: (N, 3, H, W) -> (N, 192, H/8, W/8) (seed 9-2)."""

    def __init__(self) -> None:
        super().__init__()
        _add_conv_bn(self, "conv1_7x7_s2", 3, 64, 7, stride=2)
        _add_conv_bn(self, "conv2_3x3_reduce", 64, 64, 1)
        _add_conv_bn(self, "conv2_3x3", 64, 192, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_bn_relu(self, "conv1_7x7_s2", x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)  # pool1_3x3_s2
        x = _conv_bn_relu(self, "conv2_3x3_reduce", x)
        x = _conv_bn_relu(self, "conv2_3x3", x)
        return F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)  # pool2_3x3_s2


class Inception(nn.Module):
    """One BN-Inception block: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool(-1x1) branches, concatenated in that order."""

    def __init__(self, spec: InceptionSpec) -> None:
        super().__init__()
        self.spec = spec
        p, cin, s = spec.name, spec.in_channels, spec.stride
        if spec.conv_1x1:
            _add_conv_bn(self, f"{p}_1x1", cin, spec.conv_1x1, 1)
        _add_conv_bn(self, f"{p}_3x3_reduce", cin, spec.reduce_3x3, 1)
        _add_conv_bn(self, f"{p}_3x3", spec.reduce_3x3, spec.conv_3x3, 3, stride=s)
        _add_conv_bn(self, f"{p}_double_3x3_reduce", cin, spec.reduce_double, 1)
        _add_conv_bn(self, f"{p}_double_3x3_1", spec.reduce_double, spec.conv_double, 3)
        _add_conv_bn(self, f"{p}_double_3x3_2", spec.conv_double, spec.conv_double, 3, stride=s)
        if spec.pool_proj:
            _add_conv_bn(self, f"{p}_pool_proj", cin, spec.pool_proj, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.spec.name
        branches = []
        if self.spec.conv_1x1:
            branches.append(_conv_bn_relu(self, f"{p}_1x1", x))
        y = _conv_bn_relu(self, f"{p}_3x3_reduce", x)
        branches.append(_conv_bn_relu(self, f"{p}_3x3", y))
        y = _conv_bn_relu(self, f"{p}_double_3x3_reduce", x)
        y = _conv_bn_relu(self, f"{p}_double_3x3_1", y)
        branches.append(_conv_bn_relu(self, f"{p}_double_3x3_2", y))
        branches.append(self._pool_branch(x))
        return torch.cat(branches, dim=1)

    def _pool_branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.pool == "max_stride2":
            return _stride2_max_pool(x)
        if self.spec.pool == "avg":
            # Caffe averages over the full 3x3 window including the zero padding: count_include_pad=True.
            y = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        else:
            y = F.max_pool2d(x, kernel_size=3, stride=1, padding=1, ceil_mode=True)
        return _conv_bn_relu(self, f"{self.spec.name}_pool_proj", y)


class InceptionA(Inception):
    """inception_3a: (N, 192, h, w) -> (N, 256, h, w) (seed 9-2)."""

    def __init__(self) -> None:
        super().__init__(INCEPTION_3A)


class InceptionB(Inception):
    """inception_3b: (N, 256, h, w) -> (N, 320, h, w) (seed 9-2)."""

    def __init__(self) -> None:
        super().__init__(INCEPTION_3B)


class InceptionC(nn.Module):
    """The part of inception_3c that feeds ECO's 3D net: double_3x3_reduce + double_3x3_1, 320 -> 96 (seed 9-2)."""

    def __init__(self) -> None:
        super().__init__()
        s = INCEPTION_3C
        _add_conv_bn(self, "inception_3c_double_3x3_reduce", s.in_channels, s.reduce_double, 1)
        _add_conv_bn(self, "inception_3c_double_3x3_1", s.reduce_double, s.conv_double, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_bn_relu(self, "inception_3c_double_3x3_reduce", x)
        return _conv_bn_relu(self, "inception_3c_double_3x3_1", x)


class ECO2D(nn.Module):
    """ECO's shared per-frame 2D net (seed `ECO_2D`): (N, 3, H, W) -> (N, 96, H/8, W/8)."""

    out_channels = 96

    def __init__(self) -> None:
        super().__init__()
        self.basic_conv = BasicConv()
        self.inception_a = InceptionA()
        self.inception_b = InceptionB()
        self.inception_c = InceptionC()

    def forward_with_3b(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (inception_3b output (N, 320, h, w), the 96-channel output): ECO-Full's tail needs both."""
        x = self.basic_conv(x)  # (N, 192, H/8, W/8)
        x = self.inception_a(x)  # (N, 256, H/8, W/8)
        x3b = self.inception_b(x)  # (N, 320, H/8, W/8)
        return x3b, self.inception_c(x3b)  # (N, 96, H/8, W/8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_3b(x)[1]


class InceptionCTail(nn.Module):
    """The rest of inception_3c for ECO-Full: the 3x3 branch, double_3x3_2 and the pool, all stride 2.

    Its double-3x3 branch continues from the shared trunk's `inception_3c_double_3x3_1` output (ECOfull.yaml), so
    that branch's first two convs are not duplicated here.
    """

    def __init__(self) -> None:
        super().__init__()
        s = INCEPTION_3C
        _add_conv_bn(self, "inception_3c_3x3_reduce", s.in_channels, s.reduce_3x3, 1)
        _add_conv_bn(self, "inception_3c_3x3", s.reduce_3x3, s.conv_3x3, 3, stride=2)
        _add_conv_bn(self, "inception_3c_double_3x3_2", s.conv_double, s.conv_double, 3, stride=2)

    def forward(self, x3b: torch.Tensor, double_3x3_1: torch.Tensor) -> torch.Tensor:
        a = _conv_bn_relu(self, "inception_3c_3x3", _conv_bn_relu(self, "inception_3c_3x3_reduce", x3b))
        b = _conv_bn_relu(self, "inception_3c_double_3x3_2", double_3x3_1)
        return torch.cat([a, b, _stride2_max_pool(x3b)], dim=1)  # (N, 160 + 96 + 320 = 576, h/2, w/2)


class BNInceptionTail(nn.Module):
    """ECO-Full's extra per-frame stream: BN-Inception after the shared trunk, up to inception_5b.

    (N, 320, h, w) inception_3b output + (N, 96, h, w) shared trunk output -> (N, 1024, h/4, w/4).
    """

    out_channels = 1024

    def __init__(self) -> None:
        super().__init__()
        self.inception_3c = InceptionCTail()
        self.inception_4a = Inception(INCEPTION_4A)
        self.inception_4b = Inception(INCEPTION_4B)
        self.inception_4c = Inception(INCEPTION_4C)
        self.inception_4d = Inception(INCEPTION_4D)
        self.inception_4e = Inception(INCEPTION_4E)
        self.inception_5a = Inception(INCEPTION_5A)
        self.inception_5b = Inception(INCEPTION_5B)

    def forward(self, x3b: torch.Tensor, double_3x3_1: torch.Tensor) -> torch.Tensor:
        x = self.inception_3c(x3b, double_3x3_1)  # (N, 576, h/2, w/2)
        x = self.inception_4a(x)  # (N, 576, h/2, w/2)
        x = self.inception_4b(x)  # (N, 576, h/2, w/2)
        x = self.inception_4c(x)  # (N, 608, h/2, w/2)
        x = self.inception_4d(x)  # (N, 608, h/2, w/2)
        x = self.inception_4e(x)  # (N, 1056, h/4, w/4)
        x = self.inception_5a(x)  # (N, 1024, h/4, w/4)
        return self.inception_5b(x)  # (N, 1024, h/4, w/4)
