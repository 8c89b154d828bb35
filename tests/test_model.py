"""ECO-Lite / ECO-Full: shapes, parameter counts, compute, gradients, a golden output, fast-training friendliness.

Real forwards run at T=4, 112 px (about 3 GMACs) to keep the file within seconds on 2 shared cores; the shape grid
and the 224 px reference numbers run on the meta device (shapes and FLOPs without arithmetic).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.labels import kinetics400_labels
from pipeline.model import ECO, eco_full, eco_lite
from pipeline.model.info import model_info


def _calibrate_bn(model: ECO, seed: int, size: int = 112, frames: int = 4) -> None:
    """Set every BatchNorm's running stats to the statistics of one random batch, so eval outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, running stats = that batch's stats
    model.train()
    with torch.no_grad():
        model(torch.randn(2, frames, 3, size, size, generator=g) * 50)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def _clip(seed: int, n: int = 1, t: int = 4, size: int = 112) -> torch.Tensor:
    # The official input space: BGR, 0-255 minus per-channel means, so values of tens.
    return torch.randn(n, t, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 50


# --- shapes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lite", "full"])
def test_output_shape_for_any_frames_and_size(variant: str) -> None:
    # Odd sizes (113, 171) give odd feature maps at inception_3c / 4e, where ECO-Full's stride-2 branches must
    # still line up.
    with torch.device("meta"):
        model = ECO(variant=variant, num_classes=7, num_segments=16, dropout=0.3).eval()
        for frames in (1, 4, 8, 16, 32):
            for size in (112, 113, 144, 171, 224):
                assert model(torch.empty(2, frames, 3, size, size)).shape == (2, 7), (frames, size)
        assert model.forward_features(torch.empty(2, 4, 3, 112, 112)).shape == (2, model.feature_dim)
        assert model(torch.empty(1, 4, 3, 112, 160)).shape == (1, 7)  # non-square


def test_3d_stage_shapes_match_the_paper_at_16_frames_224() -> None:
    with torch.device("meta"):
        model = ECO(variant="lite", num_classes=400, num_segments=16, dropout=0.3).eval()
        x = torch.empty(3, 16, 3, 224, 224)
    seen = {}
    for name in ("net2d.inception_c", "net3d.res3", "net3d.res4", "net3d.res5"):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
    model(x)
    assert seen == {
        "net2d.inception_c": (48, 96, 28, 28),
        "net3d.res3": (3, 128, 16, 28, 28),
        "net3d.res4": (3, 256, 8, 14, 14),
        "net3d.res5": (3, 512, 4, 7, 7),
    }


@pytest.mark.parametrize(("variant", "frames", "size"), [("lite", 4, 112), ("lite", 5, 120), ("full", 4, 144)])
def test_real_forward_shapes_and_finite(variant: str, frames: int, size: int) -> None:
    torch.manual_seed(0)
    model = ECO(variant=variant, num_classes=11, num_segments=frames, dropout=0.3).eval()
    with torch.no_grad():
        logits = model(_clip(1, n=2, t=frames, size=size))
    assert logits.shape == (2, 11) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_input_of_the_wrong_rank_is_rejected_with_the_expected_layout() -> None:
    model = ECO(variant="lite", num_classes=3, num_segments=4, dropout=0.0)
    with pytest.raises(ValueError, match=r"\(N, T, 3, H, W\).*\(8, 3, 112, 112\)"):
        model(torch.zeros(8, 3, 112, 112))


def test_builders_are_keyword_only_and_set_attributes() -> None:
    with pytest.raises(TypeError):
        eco_lite(400)  # type: ignore[misc]
    with torch.device("meta"):
        lite = eco_lite(num_classes=101, num_segments=8, dropout=0.6)
        full = eco_full()
    assert (lite.variant, lite.num_classes, lite.num_segments, lite.feature_dim) == ("lite", 101, 8, 512)
    assert lite.dropout.p == 0.6 and lite.fc.in_features == 512 and lite.fc.out_features == 101
    assert (full.variant, full.num_classes, full.num_segments, full.feature_dim) == ("full", 400, 16, 1536)
    assert full.dropout.p == 0.3


def test_layer_semantics_bias_bn_eps_and_pools() -> None:
    with torch.device("meta"):
        model = eco_full()
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(convs) == len(bns) + 2  # every conv has a BN except the two 3D shortcut convs
    assert all(c.bias is not None for c in convs)
    assert all(b.eps == 1e-5 and b.momentum == 0.1 and b.affine and b.track_running_stats for b in bns)
    shortcut_bns = [n for n, _ in model.named_modules() if n.endswith(("res4a_down_bn", "res5a_down_bn"))]
    assert shortcut_bns == []


# --- parameter counts and compute --------------------------------------------------------------------------------


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_400_classes() -> None:
    with torch.device("meta"):
        lite, full = eco_lite(), eco_full()
    assert _count(lite) == 37_503_856
    assert (_count(lite.net2d), _count(lite.net3d), _count(lite.fc)) == (681_568, 36_617_088, 205_200)
    assert _count(full) == 47_502_128
    assert _count(full.fc) == 1536 * 400 + 400
    assert _count(full.net2d) + _count(full.net3d) == _count(lite) - _count(lite.fc)


@pytest.mark.parametrize(("variant", "frames", "gmacs"),
                         [("lite", 16, 46.5), ("lite", 4, 11.6), ("lite", 8, 23.2), ("lite", 32, 93.0),
                          ("full", 16, 64.4)])
def test_model_info_reference_compute(variant: str, frames: int, gmacs: float) -> None:
    info = model_info(variant, num_segments=frames, size=224, num_classes=400)
    assert round(info["gmacs"], 1) == gmacs
    assert info["output_shape"] == [1, 400]
    assert info["params"] == {"lite": 37_503_856, "full": 47_502_128}[variant]
    assert info["params"] == info["params_2d"] + info["params_3d"] + info["params_head"]
    assert {k: info[k] for k in ("variant", "num_segments", "size", "num_classes")} == {
        "variant": variant, "num_segments": frames, "size": 224, "num_classes": 400}


def test_model_info_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="'medium'"):
        model_info("medium", num_segments=16, size=224, num_classes=400)


# --- training behaviour ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lite", "full"])
def test_gradient_reaches_every_parameter(variant: str) -> None:
    torch.manual_seed(0)
    model = ECO(variant=variant, num_classes=5, num_segments=4, dropout=0.3).train()
    logits = model(_clip(2, n=1, t=4, size=112))
    F.cross_entropy(logits, torch.tensor([3])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_reset_head_changes_only_the_classifier() -> None:
    torch.manual_seed(0)
    model = ECO(variant="lite", num_classes=5, num_segments=4, dropout=0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_head(num_classes=9)
    after = model.state_dict()
    assert model.num_classes == 9 and after["fc.weight"].shape == (9, 512)
    assert torch.count_nonzero(after["fc.bias"]) == 0
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))


# --- golden output -----------------------------------------------------------------------------------------------

# Logits of ECO-Lite / ECO-Full (5 classes, seed 0 init, BN calibrated on seed 1, input seed 2, T=4, 112 px).
# They change only if the architecture, the init or the layer semantics change: update deliberately.
GOLDEN = {
    "lite": [-0.424264, -0.696664, 1.524684, 0.418819, 0.466031],
    "full": [-0.919234, -0.626387, -0.294955, -0.261719, -0.844187],
}


@pytest.mark.parametrize("variant", ["lite", "full"])
def test_golden_output(variant: str) -> None:
    torch.manual_seed(0)
    model = ECO(variant=variant, num_classes=5, num_segments=4, dropout=0.3)
    _calibrate_bn(model, seed=1)
    with torch.no_grad():
        logits = model(_clip(2, n=1, t=4, size=112))[0]
    torch.testing.assert_close(logits, torch.tensor(GOLDEN[variant]), rtol=1e-3, atol=1e-3)


# --- fast-training friendliness ----------------------------------------------------------------------------------


def test_autocast_bf16_and_channels_last_match_fp32() -> None:
    torch.manual_seed(0)
    model = ECO(variant="lite", num_classes=5, num_segments=4, dropout=0.3)
    _calibrate_bn(model, seed=1)
    x = _clip(2, n=1, t=4, size=112)
    with torch.no_grad():
        ref = model(x)
        model.to_channels_last()
        assert model.net2d.basic_conv.conv1_7x7_s2.weight.is_contiguous(memory_format=torch.channels_last)
        assert model.net3d.res3.res3a_2.weight.is_contiguous(memory_format=torch.channels_last_3d)
        layouts = []
        model.net3d.register_forward_pre_hook(
            lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))
        cl = model(x)
        assert layouts == [True]  # the (N, 96, T, h, w) view of a channels_last 2D output, no copy
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
    assert bf.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: agree to a few percent of the logit range.
    assert (bf.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 0.05


def test_torch_compile_captures_one_graph() -> None:
    # fullgraph=True fails on any graph break. aot_eager runs Dynamo and AOTAutograd (the parts that see the
    # model's Python) without generating C++ kernels, which take minutes on 2 CPU cores; inductor's codegen is
    # exercised by the training benchmarks on GPU.
    torch.manual_seed(0)
    model = ECO(variant="lite", num_classes=5, num_segments=4, dropout=0.0)
    _calibrate_bn(model, seed=1)
    x = _clip(2, n=1, t=4, size=112)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


# --- labels ------------------------------------------------------------------------------------------------------


def test_kinetics400_labels_from_package_data() -> None:
    labels = kinetics400_labels()
    assert len(labels) == 400 and len(set(labels)) == 400
    assert labels[0] == "abseiling" and labels[-1] == "zumba"
    assert labels.index("arm wrestling") == 6 and labels.index("bungee jumping") == 40  # label_id - 1
    labels.append("mutated")
    assert len(kinetics400_labels()) == 400  # callers get a copy
