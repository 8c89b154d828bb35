"""Starting ECO where the authors started: TSN's 2D BN-Inception file + a Kinetics 3D ResNet-18 file (issue 14).

Both files are built here with random tensors in the layouts of ECO_REFERENCE.md ("The authors' initialisation"),
from layer tables written independently of pipeline.model: the 2D file from BN-Inception's channel table (Ioffe &
Szegedy 2015, Table 1 columns, with TSN's Caffe layer names), the 3D file from the Caffe 3D ResNet-18 layer list
(conv1, res2a..res5b, fc8; res3a_2 after res3a_1, so 128 input channels). The authors' own key list of the whole
ECO-Lite Kinetics checkpoint (tests/data/eco_lite_kinetics_keys.json) checks that the two files together provide
exactly the tensors of ECO that the authors trained, no more and no fewer.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.config import ConfigError, load_config
from pipeline.model import ECO, CheckpointError, eco_full, eco_lite, load_init_weights
from pipeline.model.weights import plan_init, project_to_official, read_init_state_dict

REPO = Path(__file__).resolve().parents[1]
KINETICS = 400

# --- the 2D file: BN-Inception as the paper's table ---------------------------------------------------------------
# Block -> (input channels, #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool proj); 0 = no such
# branch (the stride-2 blocks 3c and 4e concatenate the pooled input as is).
BN_INCEPTION_TABLE = {
    "inception_3a": (192, 64, 64, 64, 64, 96, 32),
    "inception_3b": (256, 64, 64, 96, 64, 96, 64),
    "inception_3c": (320, 0, 128, 160, 64, 96, 0),
    "inception_4a": (576, 224, 64, 96, 96, 128, 128),
    "inception_4b": (576, 192, 96, 128, 96, 128, 128),
    "inception_4c": (576, 160, 128, 160, 128, 160, 128),
    "inception_4d": (608, 96, 128, 192, 160, 192, 128),
    "inception_4e": (608, 0, 128, 192, 192, 256, 0),
    "inception_5a": (1056, 352, 192, 320, 160, 224, 128),
    "inception_5b": (1024, 352, 192, 320, 192, 224, 128),
}


def bninception_convs() -> list[tuple[str, int, int, tuple[int, int]]]:
    """(Caffe name, in, out, kernel) of BN-Inception's 69 convolutions."""
    convs = [("conv1_7x7_s2", 3, 64, (7, 7)), ("conv2_3x3_reduce", 64, 64, (1, 1)), ("conv2_3x3", 64, 192, (3, 3))]
    for block, (cin, c1, r3, c3, rd, cd, proj) in BN_INCEPTION_TABLE.items():
        if c1:
            convs.append((f"{block}_1x1", cin, c1, (1, 1)))
        convs += [(f"{block}_3x3_reduce", cin, r3, (1, 1)), (f"{block}_3x3", r3, c3, (3, 3)),
                  (f"{block}_double_3x3_reduce", cin, rd, (1, 1)), (f"{block}_double_3x3_1", rd, cd, (3, 3)),
                  (f"{block}_double_3x3_2", cd, cd, (3, 3))]
        if proj:
            convs.append((f"{block}_pool_proj", cin, proj, (1, 1)))
    return convs


# --- the 3D file: a 3D ResNet-18 in Caffe names, BatchNorm after the sums -----------------------------------------
RESNET3D_STAGES = (("res2", 64, 64), ("res3", 64, 128), ("res4", 128, 256), ("res5", 256, 512))


def resnet3d18_layers() -> list[tuple[str, int, int, tuple[int, ...] | None]]:
    """(Caffe name, in, out, conv kernel or None for a BatchNorm of `out` channels).

    conv1's kernel and the res3a shortcut (res3a_down) are not used by ECO, so their exact shapes do not matter here;
    the stride-2 shortcuts res4a_down and res5a_down are 3x3x3 convs without BatchNorm, as in ECO's 3D part.
    """
    k = (3, 3, 3)
    layers: list[tuple[str, int, int, tuple[int, ...] | None]] = [("conv1", 3, 64, (3, 7, 7)),
                                                                   ("conv1_bn", 0, 64, None)]
    for stage, cin, c in RESNET3D_STAGES:
        layers += [(f"{stage}a_1", cin, c, k), (f"{stage}a_1_bn", 0, c, None), (f"{stage}a_2", c, c, k)]
        if cin != c:
            layers.append((f"{stage}a_down", cin, c, k))
        layers += [(f"{stage}a_bn", 0, c, None), (f"{stage}b_1", c, c, k), (f"{stage}b_1_bn", 0, c, None),
                   (f"{stage}b_2", c, c, k), (f"{stage}b_bn", 0, c, None)]
    return layers


def _conv(sd: dict[str, torch.Tensor], name: str, cin: int, cout: int, kernel: tuple[int, ...],
          g: torch.Generator) -> None:
    fan_in = cin * int(torch.tensor(kernel).prod())
    # He-scaled weights and near-identity BatchNorms keep activations O(1) through ~40 layers.
    sd[f"{name}.weight"] = torch.randn(cout, cin, *kernel, generator=g) * (2.0 / fan_in) ** 0.5
    sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1


def _bn(sd: dict[str, torch.Tensor], name: str, c: int, g: torch.Generator) -> None:
    # Files of that era have no num_batches_tracked (ECO_REFERENCE.md).
    sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
    sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
    sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
    sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5


def bninception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, cin, cout, kernel in bninception_convs():
        _conv(sd, name, cin, cout, kernel, g)
        _bn(sd, f"{name}_bn", cout, g)
    sd["fc.weight"] = torch.randn(KINETICS, 1024, generator=g) * 0.03
    sd["fc.bias"] = torch.randn(KINETICS, generator=g) * 0.1
    return sd


def resnet3d18_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, cin, cout, kernel in resnet3d18_layers():
        if kernel:
            _conv(sd, name, cin, cout, kernel, g)
        else:
            _bn(sd, name, cout, g)
    sd["fc8.weight"] = torch.randn(KINETICS, 512, generator=g) * 0.03
    sd["fc8.bias"] = torch.randn(KINETICS, generator=g) * 0.1
    return {f"module.base_model.{k}": v for k, v in sd.items()}


def _save_legacy(path: Path, obj: dict) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)  # both files predate torch's zip format
    return path


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    return {"2d": bninception_state_dict(), "3d": resnet3d18_state_dict()}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, states: dict) -> dict:
    d = tmp_path_factory.mktemp("init")
    path2d = _save_legacy(d / "bninception_rgb_kinetics_init-d4ee618d3399.pth", {"state_dict": states["2d"]})
    path3d = _save_legacy(d / "C3DResNet18_rgb_16F_kinetics_v1.pth.tar",
                          {"epoch": 30, "arch": "C3DRes18", "state_dict": states["3d"], "best_prec1": 50.0})
    return {"2d": path2d, "3d": path3d, "sd2d": states["2d"], "sd3d": states["3d"]}


def _shapes(variant: str, num_classes: int = KINETICS) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = ECO(variant=variant, num_classes=num_classes, num_segments=16, dropout=0.3)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _layer_param(key: str) -> str:
    return ".".join(key.split(".")[-2:])  # our paths end in the Caffe layer name


def _res3a_2_as_the_authors(w: torch.Tensor) -> torch.Tensor:
    return torch.cat(torch.chunk(w, 4, 1)[:3], 1)  # mzolfaghari/ECO-pytorch main.py, init_ECO


# --- the accounting: pure, on shapes ------------------------------------------------------------------------------


def test_the_files_have_the_reference_layouts(states: dict) -> None:
    sd2d, sd3d = states["2d"], states["3d"]
    # 69 convolutions, 69 BatchNorms and a classifier (ECO_REFERENCE.md), ~11M parameters.
    assert sum(k.endswith("_bn.running_var") for k in sd2d) == 69 and len(sd2d) == 69 * 6 + 2
    # Its convolutions and BatchNorms are ECO-Full's 2D part (10,270,240 parameters, docs/model.md) plus fc.
    assert sum(v.numel() for k, v in sd2d.items() if "running" not in k) == 10_270_240 + 1024 * KINETICS + KINETICS
    assert sd3d["module.base_model.res3a_2.weight"].shape == (128, 128, 3, 3, 3)
    assert {"module.base_model.conv1.weight", "module.base_model.res2a_1.weight", "module.base_model.res3a_1.weight",
            "module.base_model.fc8.weight"} <= set(sd3d)


@pytest.mark.parametrize("variant", ["lite", "full"])
def test_every_eco_key_is_accounted_for(states: dict, variant: str) -> None:
    sd2d, sd3d = states["2d"], states["3d"]
    expected = _shapes(variant)
    state, report = plan_init(expected, state_2d=sd2d, state_3d=sd3d, file_2d="bn.pth", file_3d="c3d.pth.tar")
    assert list(report.sources) == list(expected)  # every key, in the model's order
    counters = {k for k in expected if k.endswith("num_batches_tracked")}
    assert set(report.keys_from("2d")) == {k for k in expected if k.startswith(("net2d.", "stream2d."))} - counters
    assert set(report.keys_from("3d")) == {k for k in expected if k.startswith("net3d.")} - counters
    assert set(report.keys_from("fresh")) == {"fc.weight", "fc.bias"} | counters  # a fresh classifier, as the authors
    assert set(state) == set(report.keys_from("2d")) | set(report.keys_from("3d"))
    assert all(tuple(v.shape) == expected[k] for k, v in state.items())

    if variant == "lite":
        # The two files give exactly the tensors of the authors' ECO-Lite Kinetics checkpoint but its classifier.
        authors = json.loads((REPO / "tests" / "data" / "eco_lite_kinetics_keys.json").read_text())["keys"]
        trained = {k: tuple(s) for k, s in authors if not k.endswith("num_batches_tracked")
                   and not k.startswith("module.new_fc.")}
        assert {k: tuple(v.shape) for k, v in project_to_official(state).items()} == trained

    # The files' unused keys, by group: counted from the layer tables, not from the loader.
    unused_2d = {g.label: len(g.keys) for g in report.unused_2d}
    unused_3d = {g.label: len(g.keys) for g in report.unused_3d}
    tail = sum(6 for name, *_ in bninception_convs() if name.startswith(("inception_4", "inception_5")))
    if variant == "lite":
        # inception_3c: ECO-Lite keeps double_3x3_reduce and double_3x3_1, not 3x3_reduce, 3x3, double_3x3_2.
        assert unused_2d == {"inception_3c (partly)": 3 * 6, "inception_4a..5b": tail, "fc": 2}
    else:
        assert unused_2d == {"fc": 2}
    # conv1 + conv1_bn; res2a/2b: 4 convs and 4 BNs; res3a_1, res3a_1_bn, res3a_down; fc8.
    assert unused_3d == {"conv1": 6, "res2a..2b": 4 * 2 + 4 * 4, "res3a (partly)": 2 + 4 + 2, "fc8": 2}
    text = report.describe()
    assert f"inception_4a..5b {tail}" in text or variant == "full"
    assert "res3a_2.weight: the first 96 of the file's 128 input channels" in text
    assert "fc.{weight,bias}" in text and "Xavier" in text


def test_one_file_alone_leaves_the_other_part_fresh(states: dict) -> None:
    expected = _shapes("lite")
    _, report = plan_init(expected, state_3d=states["3d"], file_3d="c3d.pth.tar")
    assert not report.keys_from("2d") and report.file_2d is None
    assert all(report.sources[k] == "fresh" for k in expected if k.startswith("net2d."))


# --- loading real files -------------------------------------------------------------------------------------------


def _assert_fresh_by_the_authors_rule(model: ECO, keys: tuple[str, ...]) -> None:
    """BatchNorm weight 1, other weights Xavier uniform (within the bound, not constant), biases 0."""
    modules = dict(model.named_modules())
    checked = 0
    for key in keys:
        owner, _, name = key.rpartition(".")
        module, value = modules[owner], model.state_dict()[key]
        is_bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        if name == "weight" and is_bn:
            assert torch.all(value == 1), key
        elif name == "weight":
            fan_in, fan_out = value.shape[1] * value[0, 0].numel(), value.shape[0] * value[0, 0].numel()
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            assert value.abs().max() <= bound and value.std() > bound / 3, key  # uniform(-b, b) has std b/sqrt(3)
        elif name in ("bias", "running_mean", "num_batches_tracked"):
            assert torch.all(value == 0), key
        else:
            assert name == "running_var" and torch.all(value == 1), key
        checked += 1
    assert checked == len(keys)


def _assemble_by_hand(variant: str, files: dict, fc: torch.nn.Linear) -> ECO:
    """ECO with every tensor set from the files by its Caffe layer name, without pipeline.model.weights."""
    with torch.device("meta"):  # no initialisation: every tensor is set below
        hand = ECO(variant=variant, num_classes=fc.out_features, num_segments=4, dropout=0.3)
    hand.to_empty(device="cpu")
    sd3d = {k.removeprefix("module.base_model."): v for k, v in files["sd3d"].items()}
    with torch.no_grad():
        for key, tensor in hand.state_dict().items():
            if key.endswith("num_batches_tracked"):
                source = torch.zeros(())
            elif key.startswith("fc."):
                source = getattr(fc, key[3:])
            elif key.startswith("net3d."):
                source = sd3d[_layer_param(key)]
                if key.endswith("res3a_2.weight"):
                    source = _res3a_2_as_the_authors(source)
            else:
                source = files["sd2d"][_layer_param(key)]
            tensor.copy_(source)
    return hand.eval()


@pytest.mark.parametrize("variant", ["lite", "full"])
def test_loaded_model_equals_the_files_and_a_model_assembled_by_hand(files: dict, variant: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    build = eco_lite if variant == "lite" else eco_full
    torch.manual_seed(7)
    with caplog.at_level("INFO", logger="pipeline.model.eco"):
        model = build(num_classes=5, num_segments=4, init_2d=str(files["2d"]), init_3d=files["3d"]).eval()
    assert any("initialised as the authors did" in r.getMessage() and "inception_3c" in r.getMessage()
               for r in caplog.records) or variant == "full"
    state = model.state_dict()
    sd3d = files["sd3d"]

    twod = [k for k in state if k.startswith(("net2d.", "stream2d.")) and not k.endswith("num_batches_tracked")]
    assert len(twod) == {"lite": 19 * 6, "full": 69 * 6}[variant]  # Lite: conv1, conv2, 3a, 3b, 2 of 3c
    for key in twod:
        assert torch.equal(state[key], files["sd2d"][_layer_param(key)]), key
    w = sd3d["module.base_model.res3a_2.weight"]
    assert torch.equal(state["net3d.res3.res3a_2.weight"], w[:, : w.shape[1] * 3 // 4])
    assert torch.equal(state["net3d.res3.res3a_2.weight"], _res3a_2_as_the_authors(w))
    rest_3d = [k for k in state if k.startswith("net3d.") and not k.endswith(("num_batches_tracked", "res3a_2.weight"))]
    for key in rest_3d:
        assert torch.equal(state[key], sd3d["module.base_model." + _layer_param(key)]), key
    fresh = ("fc.weight", "fc.bias") + tuple(k for k in state if k.endswith("num_batches_tracked"))
    _assert_fresh_by_the_authors_rule(model, fresh)

    hand = _assemble_by_hand(variant, files, model.fc)
    clip = torch.randn(1, 4, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 50
    with torch.no_grad():
        logits = model(clip)
        assert torch.isfinite(logits).all() and logits.abs().max() > 0
        torch.testing.assert_close(logits, hand(clip), rtol=0, atol=0)


def test_without_a_3d_file_the_3d_part_starts_by_the_authors_rule(files: dict) -> None:
    model = ECO(variant="lite", num_classes=5, num_segments=4, dropout=0.3)
    report = load_init_weights(model, init_2d=files["2d"])
    fresh = report.keys_from("fresh")
    assert {k for k in model.state_dict() if k.startswith("net3d.")} <= set(fresh)
    _assert_fresh_by_the_authors_rule(model, fresh)
    assert torch.equal(model.net2d.basic_conv.conv1_7x7_s2.weight, files["sd2d"]["conv1_7x7_s2.weight"])


def test_files_are_read_from_uris(files: dict) -> None:
    model = ECO(variant="lite", num_classes=5, num_segments=4, dropout=0.3)
    report = load_init_weights(model, init_2d=files["2d"].as_uri(), init_3d=files["3d"].as_uri())
    assert report.file_2d.startswith("file://") and len(report.keys_from("3d")) > 0
    assert torch.equal(model.net3d.res5.res5b_bn.running_var, files["sd3d"]["module.base_model.res5b_bn.running_var"])


def test_model_info_prints_the_accounting(files: dict, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["model-info", "--init-2d", str(files["2d"]), "--init-3d", str(files["3d"])]) == 0
    out = capsys.readouterr().out
    assert "37,503,856" in out and "starting point" in out
    assert f"2D BN-Inception {files['2d']}: 114 ECO tensors loaded" in out
    assert ("unused: 302 keys (inception_3c (partly) 18 [inception_3c_3x3_reduce, inception_3c_3x3_reduce_bn, "
            "inception_3c_3x3, inception_3c_3x3_bn, inception_3c_double_3x3_2, inception_3c_double_3x3_2_bn], "
            "inception_4a..5b 282, fc 2)") in out
    assert f"3D ResNet-18 {files['3d']}: 70 ECO tensors loaded" in out
    assert "unused: 40 keys (conv1 6, res2a..2b 24, res3a (partly) 8 [res3a_1, res3a_1_bn, res3a_down], fc8 2)" in out
    assert cli.main(["model-info", "--variant", "full", "--json", "--init-2d", str(files["2d"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["init"]["loaded_2d"] == 69 * 6 and info["init"]["unused_2d"] == {"fc": 2}
    assert info["init"]["file_3d"] is None and "net3d.res3.res3a_2.weight" in info["init"]["fresh"]


# --- failures name the key and the file --------------------------------------------------------------------------


def test_truncated_file_names_the_file(files: dict, tmp_path: Path) -> None:
    path = tmp_path / "bninception_truncated.pth"
    path.write_bytes(files["2d"].read_bytes()[: 5_000_000])
    with pytest.raises(CheckpointError, match=r"bninception_truncated\.pth: truncated or not a PyTorch checkpoint"):
        eco_lite(num_classes=5, num_segments=4, init_2d=path)


def test_wrong_shapes_name_the_key_and_the_file(files: dict, tmp_path: Path) -> None:
    sd2d = dict(files["sd2d"])
    sd2d["inception_3b_3x3.weight"] = torch.zeros(96, 64, 5, 5)
    path = _save_legacy(tmp_path / "bn_wrong.pth", {"state_dict": sd2d})
    with pytest.raises(CheckpointError, match=r"bn_wrong\.pth does not fit ECO's 2D BN-Inception part: mis-shaped "
                                              r"inception_3b_3x3\.weight \(96, 64, 5, 5\) \(ECO \(96, 64, 3, 3\)\)"):
        eco_lite(num_classes=5, num_segments=4, init_2d=path)

    sd3d = dict(files["sd3d"])
    sd3d["module.base_model.res3a_2.weight"] = torch.zeros(128, 96, 3, 3, 3)  # already sliced: not the layout
    with pytest.raises(CheckpointError, match=r"c3d_wrong\.pth\.tar: module\.base_model\.res3a_2\.weight has shape "
                                              r"\(128, 96, 3, 3, 3\), expected \(128, 128, 3, 3, 3\)"):
        plan_init(_shapes("lite"), state_3d=sd3d, file_3d="c3d_wrong.pth.tar")


def test_missing_key_names_the_key_and_the_file(states: dict) -> None:
    sd3d = {k: v for k, v in states["3d"].items() if "res4a_down" not in k}
    with pytest.raises(CheckpointError, match=r"c3d_missing\.pth\.tar does not fit ECO's 3D ResNet-18 part: missing "
                                              r"module\.base_model\.res4a_down\.weight, module\.base_model\.res4a_down"
                                              r"\.bias$"):
        plan_init(_shapes("lite"), state_3d=sd3d, file_3d="c3d_missing.pth.tar")
    # ECO-Full needs the whole BN-Inception: a file without inception_5b fails, ECO-Lite does not care.
    sd2d = {k: v for k, v in states["2d"].items() if not k.startswith("inception_5b")}
    plan_init(_shapes("lite"), state_2d=sd2d, file_2d="bn_no_5b.pth")
    with pytest.raises(CheckpointError, match=r"bn_no_5b\.pth does not fit ECO's 2D BN-Inception part: missing "
                                              r"inception_5b_1x1\.weight"):
        plan_init(_shapes("full"), state_2d=sd2d, file_2d="bn_no_5b.pth")


def test_swapped_files_are_named(states: dict) -> None:
    with pytest.raises(CheckpointError, match=r"C3DResNet18\.pth\.tar does not fit .*its keys are prefixed"):
        plan_init(_shapes("lite"), state_2d=states["3d"], file_2d="C3DResNet18.pth.tar")
    with pytest.raises(CheckpointError, match=r"bninception\.pth does not fit .*expected keys 'module\.base_model\."):
        plan_init(_shapes("lite"), state_3d=states["2d"], file_3d="bninception.pth")


class _RunsCode:
    """What a malicious pickle smuggles in: unpickling it would call Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickle_with_code_is_refused_and_not_run(files: dict, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "bninception_evil.pth"
    with path.open("wb") as f:
        pickle.dump({"state_dict": {"conv1_7x7_s2.weight": torch.zeros(1)}, "x": _RunsCode(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"bninception_evil\.pth.*weights_only=True"):
        eco_lite(num_classes=5, num_segments=4, init_2d=path, init_3d=files["3d"])
    assert not marker.exists()


# --- configuration ------------------------------------------------------------------------------------------------


def test_init_files_exclude_a_whole_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.init_2d: cannot be combined with model\.pretrained"):
        load_config(None, ["model.pretrained=eco.pth.tar", "model.init_2d=bn.pth"])
    with pytest.raises(ValueError, match=r"pretrained .* cannot be combined with init_2d/init_3d"):
        eco_lite(num_classes=5, pretrained="eco.pth.tar", init_3d="c3d.pth.tar")


def test_kinetics_recipe_starts_from_both_files_and_training_passes_them(files: dict) -> None:
    cfg = load_config(REPO / "jobs" / "configs" / "kinetics400_eco_lite_16f.yaml")
    assert cfg.model.pretrained is None
    assert cfg.model.init_2d.endswith("bninception_rgb_kinetics_init-d4ee618d3399.pth")
    assert cfg.model.init_3d.endswith("C3DResNet18_rgb_16F_kinetics_v1.pth.tar")

    from pipeline.training.loop import build_model

    cfg = cfg.replace({"model.num_segments": 4, "model.init_2d": str(files["2d"]), "model.init_3d": str(files["3d"])})
    model = build_model(cfg, num_classes=3)
    assert torch.equal(model.net3d.res4.res4a_down.weight, files["sd3d"]["module.base_model.res4a_down.weight"])
    assert torch.equal(model.net2d.inception_b.inception_3b_pool_proj_bn.bias,
                       files["sd2d"]["inception_3b_pool_proj_bn.bias"])


def test_bare_state_dicts_are_read_and_other_files_are_named(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pth"
    torch.save({"conv1_7x7_s2.weight": torch.ones(2)}, bare)  # some BN-Inception copies are a bare state_dict
    assert list(read_init_state_dict(bare)[0]) == ["conv1_7x7_s2.weight"]
    other = tmp_path / "other.pth"
    torch.save({"model": [1, 2]}, other)
    with pytest.raises(CheckpointError, match=r"other\.pth: not a weights file: .* top-level keys model"):
        read_init_state_dict(other)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        read_init_state_dict(tmp_path / "absent.pth")
