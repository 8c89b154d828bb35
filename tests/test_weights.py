"""Checkpoints: key remapping, the authors' layout, this project's layout, and every failure naming its cause.

The equivalence test compares our model, loaded from a checkpoint written in the authors' layout, with an
independent transcription of the authors' forward (tf_model_zoo/ECO*/ECO*.yaml run by their pytorch_load.py:
Caffe ops on the official state dict with torch.nn.functional, their pooling head included) at 224 px, where the
authors' fixed-size pools are defined.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import (
    ECO,
    CheckpointError,
    eco_full,
    eco_lite,
    load_weights,
    official_to_project,
    project_to_official,
    read_checkpoint,
)


def _calibrate_bn(model: ECO, seed: int, size: int = 112, frames: int = 4) -> None:
    """Running stats := one random batch's statistics, and random affine params: BN handling matters."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, frames, 3, size, size, generator=g) * 50)
        for m in bns:
            m.momentum = 0.1
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
    model.eval()


# The real ECO-Lite Kinetics checkpoint's keys and shapes, in its order (all 216; how they were taken: the file's
# "source"). Kept in sync with ../shared/data/eco_lite_kinetics_keys.json, which test_init_weights also reads.
OFFICIAL_LITE_KEYS: list[tuple[str, tuple[int, ...]]] = [
    (key, tuple(shape)) for key, shape in
    json.loads((Path(__file__).parent / "data" / "eco_lite_kinetics_keys.json").read_text())["keys"]]


def official_state_dict(model: ECO) -> dict[str, torch.Tensor]:
    """`model`'s tensors under the authors' key names, independently of weights.py.

    ECO-Lite: the real checkpoint's key list (OFFICIAL_LITE_KEYS, in its order), each key filled with our tensor of
    the same Caffe layer and parameter (our paths end in the layer name); every shape but the classifier's (the
    class count) is the checkpoint's. ECO-Full (no key list of a real file here): the names derived from ours.
    """
    by_layer = {tuple(key.split(".")[-2:]) if not key.startswith("fc.") else ("new_fc", key[3:]): value
                for key, value in model.state_dict().items()}
    if model.variant != "lite":
        return {f"module.new_fc.{param}" if layer == "new_fc" else f"module.base_model.{layer}.{param}": value
                for (layer, param), value in by_layer.items()}
    out = {}
    for key, shape in OFFICIAL_LITE_KEYS:
        layer, param = key.removeprefix("module.").removeprefix("base_model.").split(".")
        value = by_layer.pop((layer, param))
        if layer != "new_fc":
            assert tuple(value.shape) == shape, (key, tuple(value.shape), shape)
        out[key] = value
    assert not by_layer, f"model tensors the real checkpoint does not have: {sorted(by_layer)[:5]}"
    return out


def _model_from_checkpoint(path: Path) -> ECO:
    """The library's one checkpoint -> model path (what `eco predict` and `eco evaluate` use)."""
    from pipeline.inference.predictor import Predictor

    return Predictor.from_checkpoint(path, device="cpu").model


def _write_official(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    # As main.py's save_checkpoint wrote it with PyTorch 0.4.1: a legacy (pre-zip) pickle with extra entries.
    torch.save({"epoch": 40, "arch": "ECO", "state_dict": state_dict, "best_prec1": torch.tensor(61.2),
                "lr": 1e-4}, path, _use_new_zipfile_serialization=False)
    return path


def _write_project(directory: Path, model: ECO, labels: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "eco-pipeline/1", "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 3, "step": 120,
                "config": {"model": {"variant": model.variant, "num_segments": model.num_segments, "dropout": 0.3,
                                     "pretrained": None}},
                "label_names": labels, "data_seed": 0, "metrics": {"val_top1": 0.5}}, directory / "checkpoint.pt")
    return directory


def _clip(seed: int, t: int, size: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, t, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 50


@pytest.fixture(scope="module")
def lite_source() -> ECO:
    torch.manual_seed(0)
    model = ECO(variant="lite", num_classes=7, num_segments=4, dropout=0.3)
    _calibrate_bn(model, seed=1)
    return model


# --- the authors' forward, transcribed from their layer list --------------------------------------------------


class AuthorsECO:
    """ECO as the authors' pytorch_load.py runs ECO.yaml / ECOfull.yaml, on an official-layout state dict."""

    def __init__(self, sd: dict[str, torch.Tensor], num_segments: int) -> None:
        self.sd, self.T = sd, num_segments

    def _p(self, layer: str, param: str) -> torch.Tensor:
        return self.sd[f"module.base_model.{layer}.{param}"]

    def _bn(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return F.batch_norm(x, self._p(layer, "running_mean"), self._p(layer, "running_var"),
                            self._p(layer, "weight"), self._p(layer, "bias"), training=False, momentum=0.1, eps=1e-5)

    def cbr(self, x: torch.Tensor, layer: str, stride: int = 1, pad: int = 0) -> torch.Tensor:
        """Convolution (bias) -> BN -> ReLU, Caffe style."""
        x = F.conv2d(x, self._p(layer, "weight"), self._p(layer, "bias"), stride, pad)
        return F.relu(self._bn(x, layer + "_bn"))

    def conv3d(self, x: torch.Tensor, layer: str, stride: int = 1) -> torch.Tensor:
        return F.conv3d(x, self._p(layer, "weight"), self._p(layer, "bias"), stride, 1)

    def bn3d_relu(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return F.relu(self._bn(x, layer))

    def inception(self, x: torch.Tensor, p: str, pool: str) -> torch.Tensor:
        a = self.cbr(x, f"{p}_1x1")
        b = self.cbr(self.cbr(x, f"{p}_3x3_reduce"), f"{p}_3x3", pad=1)
        c = self.cbr(self.cbr(self.cbr(x, f"{p}_double_3x3_reduce"), f"{p}_double_3x3_1", pad=1),
                     f"{p}_double_3x3_2", pad=1)
        if pool == "ave":  # nn.AvgPool2d(3, 1, 1, ceil_mode=True)
            d = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True)
        else:
            d = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
        return torch.cat([a, b, c, self.cbr(d, f"{p}_pool_proj")], 1)

    def inception_stride2(self, x: torch.Tensor, p: str, double_1: torch.Tensor | None = None) -> torch.Tensor:
        b = self.cbr(self.cbr(x, f"{p}_3x3_reduce"), f"{p}_3x3", stride=2, pad=1)
        if double_1 is None:
            double_1 = self.cbr(self.cbr(x, f"{p}_double_3x3_reduce"), f"{p}_double_3x3_1", pad=1)
        c = self.cbr(double_1, f"{p}_double_3x3_2", stride=2, pad=1)
        return torch.cat([b, c, F.max_pool2d(x, 3, 2, 0, ceil_mode=True)], 1)

    def __call__(self, clip: torch.Tensor, full: bool) -> torch.Tensor:
        n, t = clip.shape[:2]
        x = clip.reshape(-1, 3, *clip.shape[-2:])  # TSN: (N, T*3, H, W).view(-1, 3, H, W)
        x = self.cbr(x, "conv1_7x7_s2", stride=2, pad=3)
        x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
        x = self.cbr(x, "conv2_3x3_reduce")
        x = self.cbr(x, "conv2_3x3", pad=1)
        x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
        x = self.inception(x, "inception_3a", "ave")
        x3b = self.inception(x, "inception_3b", "ave")
        d1 = self.cbr(self.cbr(x3b, "inception_3c_double_3x3_reduce"), "inception_3c_double_3x3_1", pad=1)

        # 3D net: res3a_2 reads the 2D output viewed as (-1, num_segments, C, h, w) and transposed to (N, C, T, h, w).
        v = torch.transpose(d1.view((-1, self.T) + d1.size()[1:]), 1, 2)
        res3a_2 = self.conv3d(v, "res3a_2")
        y = self.bn3d_relu(res3a_2, "res3a_bn")
        y = self.bn3d_relu(self.conv3d(y, "res3b_1"), "res3b_1_bn")
        res3b = self.conv3d(y, "res3b_2") + res3a_2  # Eltwise on the pre-BN conv output
        y = self.bn3d_relu(res3b, "res3b_bn")
        for s in ("res4", "res5"):
            a = self.conv3d(self.bn3d_relu(self.conv3d(y, f"{s}a_1", 2), f"{s}a_1_bn"), f"{s}a_2")
            a = a + self.conv3d(y, f"{s}a_down", 2)  # no BN on the shortcut
            y = self.bn3d_relu(a, f"{s}a_bn")
            b = self.conv3d(self.bn3d_relu(self.conv3d(y, f"{s}b_1"), f"{s}b_1_bn"), f"{s}b_2") + a
            y = self.bn3d_relu(b, f"{s}b_bn")
        pool3d = F.avg_pool3d(y, (self.T // 4, 7, 7), stride=1, ceil_mode=True)  # global_pool (N, 512, 1, 1, 1)
        if not full:
            feats = pool3d.view(pool3d.size(0), -1)
        else:
            x = self.inception_stride2(x3b, "inception_3c", double_1=d1)
            for p in ("inception_4a", "inception_4b", "inception_4c", "inception_4d"):
                x = self.inception(x, p, "ave")
            x = self.inception_stride2(x, "inception_4e")
            x = self.inception(x, "inception_5a", "ave")
            x = self.inception(x, "inception_5b", "max")
            x = F.avg_pool2d(x, 7, stride=1, ceil_mode=True)  # global_pool2D_pre (N*T, 1024, 1, 1)
            x = torch.transpose(x.view((-1, self.T) + x.size()[1:]), 1, 2)
            pool2d = F.avg_pool3d(x, (self.T, 1, 1), stride=1, ceil_mode=True)  # global_pool2D_reshape_consensus
            feats = torch.cat([pool2d, pool3d], 1).view(-1, 1536)
        # fc_final became nn.Dropout in TSN._prepare_tsn (identity in eval); TSN.new_fc is the classifier.
        assert feats.shape[0] == n
        return F.linear(feats, self.sd["module.new_fc.weight"], self.sd["module.new_fc.bias"])


@pytest.mark.parametrize(("variant", "frames"), [("lite", 8), ("full", 4)])
def test_official_checkpoint_loads_strictly_and_matches_the_authors_forward(tmp_path: Path, variant: str,
                                                                             frames: int) -> None:
    torch.manual_seed(0)
    source = ECO(variant=variant, num_classes=7, num_segments=frames, dropout=0.3)
    _calibrate_bn(source, seed=1)
    official = official_state_dict(source)
    assert all(k.startswith(("module.base_model.", "module.new_fc.")) for k in official)
    assert any(k.endswith("num_batches_tracked") for k in official)
    path = _write_official(tmp_path / f"ECO_{variant}_rgb_model_Kinetics.pth.tar", official)

    build = eco_lite if variant == "lite" else eco_full
    torch.manual_seed(123)  # a different init: every tensor must come from the file
    model = build(num_classes=7, num_segments=frames, pretrained=str(path)).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    with torch.no_grad():
        # The model that wrote the file (a small clip: its weights are already known to be equal) ...
        small = _clip(3, t=frames, size=112)
        torch.testing.assert_close(model(small), source(small), rtol=0, atol=0)
        # ... and the authors' forward, at 224 px where their fixed (T/4, 7, 7) pool is defined.
        clip = _clip(2, t=frames, size=224)
        ours = model(clip)
        theirs = AuthorsECO(official, num_segments=frames)(clip, full=variant == "full")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_load_report_for_the_official_layout(tmp_path: Path, lite_source: ECO) -> None:
    path = _write_official(tmp_path / "eco.pth.tar", official_state_dict(lite_source))
    model = ECO(variant="lite", num_classes=7, num_segments=4, dropout=0.3)
    report = load_weights(model, path)
    assert report.layout == "official" and report.loaded == 216 and not report.head_reinitialized
    assert (report.checkpoint_num_classes, report.model_num_classes) == (7, 7)
    assert report.path == str(path) and "216 tensors" in report.describe()


# --- the remapping function --------------------------------------------------------------------------------------


def test_official_to_project_examples() -> None:
    value = torch.zeros(1)
    keys = {
        "module.base_model.conv1_7x7_s2.weight": "net2d.basic_conv.conv1_7x7_s2.weight",
        "module.base_model.inception_3a_pool_proj_bn.running_var":
            "net2d.inception_a.inception_3a_pool_proj_bn.running_var",
        "module.base_model.inception_3c_double_3x3_1_bn.num_batches_tracked":
            "net2d.inception_c.inception_3c_double_3x3_1_bn.num_batches_tracked",
        "module.base_model.inception_3c_double_3x3_2.weight": "stream2d.inception_3c.inception_3c_double_3x3_2.weight",
        "module.base_model.inception_4e_3x3_bn.bias": "stream2d.inception_4e.inception_4e_3x3_bn.bias",
        "module.base_model.res3a_2.weight": "net3d.res3.res3a_2.weight",
        "module.base_model.res4a_down.bias": "net3d.res4.res4a_down.bias",
        "module.base_model.res5b_bn.running_mean": "net3d.res5.res5b_bn.running_mean",
        "module.new_fc.weight": "fc.weight",
        "base_model.fc_final.bias": "fc.bias",  # no DataParallel prefix; the head of a dropout-free TSN
    }
    assert official_to_project({k: value for k in keys}) == {v: value for v in keys.values()}


@pytest.mark.parametrize("variant", ["lite", "full"])
def test_remapping_round_trips_every_key(variant: str) -> None:
    with torch.device("meta"):
        model = ECO(variant=variant, num_classes=400, num_segments=16, dropout=0.3)
    state = model.state_dict()
    official = project_to_official(state)
    assert set(official) == set(official_state_dict(model))
    assert len(official) == {"lite": 216, "full": 566}[variant]
    if variant == "lite":  # the real file's keys, in the real file's order
        assert list(official) == [key for key, _ in OFFICIAL_LITE_KEYS]
    assert list(official_to_project(official)) == list(state)


@pytest.mark.parametrize("key", ["module.base_model.inception_9z_1x1.weight", "module.base_model.res3a_2",
                                 "module.other.fc.weight", "module.base_model.res4a_down.weight.extra"])
def test_unknown_official_key_is_named(key: str) -> None:
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        official_to_project({"module.base_model.conv1_7x7_s2.weight": torch.zeros(1), key: torch.zeros(1)})


# --- failures name the file and the key --------------------------------------------------------------------------


def test_missing_key_is_named(tmp_path: Path, lite_source: ECO) -> None:
    sd = official_state_dict(lite_source)
    del sd["module.base_model.res4a_down.weight"]
    path = _write_official(tmp_path / "missing.pth.tar", sd)
    with pytest.raises(CheckpointError, match=r"missing\.pth\.tar.*missing module\.base_model\.res4a_down\.weight"):
        eco_lite(num_classes=7, num_segments=4, pretrained=path)


def test_mis_shaped_key_is_named_with_both_shapes(tmp_path: Path, lite_source: ECO) -> None:
    sd = official_state_dict(lite_source)
    sd["module.base_model.inception_3b_3x3.weight"] = torch.zeros(96, 64, 5, 5)
    path = _write_official(tmp_path / "shape.pth.tar", sd)
    with pytest.raises(CheckpointError, match=r"mis-shaped module\.base_model\.inception_3b_3x3\.weight "
                                              r"\(96, 64, 5, 5\) \(model \(96, 64, 3, 3\)\)"):
        eco_lite(num_classes=7, num_segments=4, pretrained=path)


def test_unexpected_key_is_named(tmp_path: Path, lite_source: ECO) -> None:
    sd = official_state_dict(lite_source)
    sd["module.base_model.inception_4a_1x1.weight"] = torch.zeros(224, 576, 1, 1)
    path = _write_official(tmp_path / "extra.pth.tar", sd)
    with pytest.raises(CheckpointError, match=r"ECO-Full one: build the model with eco_full\): "
                                              r"unexpected module\.base_model\.inception_4a_1x1\.weight"):
        eco_lite(num_classes=7, num_segments=4, pretrained=path)


@pytest.mark.parametrize("legacy", [True, False])
def test_truncated_file_names_the_file(tmp_path: Path, lite_source: ECO, legacy: bool) -> None:
    path = tmp_path / "truncated.pth.tar"
    torch.save({"state_dict": official_state_dict(lite_source), "epoch": 1}, path,
               _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth\.tar"):
        eco_lite(num_classes=7, num_segments=4, pretrained=path)


def test_non_checkpoint_files_name_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        read_checkpoint(text)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not a checkpoint: holds a Tensor"):
        read_checkpoint(tensor)
    other = tmp_path / "other.pt"
    torch.save({"weights": [1, 2]}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a model checkpoint: top-level keys weights"):
        load_weights(ECO(variant="lite", num_classes=3, num_segments=4, dropout=0.0), other)
    empty_dir = tmp_path / "run"
    empty_dir.mkdir()
    with pytest.raises(CheckpointError, match=r"run is a directory without checkpoint\.pt"):
        read_checkpoint(empty_dir)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        read_checkpoint(tmp_path / "nowhere.pt")


class _Payload:
    """Stands in for an object a malicious pickle would smuggle in."""


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth.tar"
    with path.open("wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth\.tar.*weights_only=True") as e:
        read_checkpoint(path)
    assert e.value.reason == "unsafe"


# --- different number of classes: backbone loads, head re-initialised ----------------------------------------------


def test_different_num_classes_reinitialises_only_the_head(tmp_path: Path, lite_source: ECO,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = _write_official(tmp_path / "kinetics.pth.tar", official_state_dict(lite_source))
    model = ECO(variant="lite", num_classes=3, num_segments=4, dropout=0.6)
    with caplog.at_level(logging.WARNING, logger="pipeline.model.weights"):
        report = load_weights(model, path)
    assert report.head_reinitialized
    assert (report.checkpoint_num_classes, report.model_num_classes, report.loaded) == (7, 3, 214)
    assert "classifier re-initialised" in report.describe()
    assert any("7 classes" in r.getMessage() and "re-initialised" in r.getMessage() for r in caplog.records)
    source = lite_source.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 3
        else:
            assert torch.equal(value, source[key]), key
    assert torch.count_nonzero(model.fc.bias) == 0 and model.fc.weight.abs().max() <= (6 / (512 + 3)) ** 0.5


def test_fine_tune_from_a_different_head_with_the_builder(tmp_path: Path, lite_source: ECO) -> None:
    path = _write_official(tmp_path / "kinetics.pth.tar", official_state_dict(lite_source))
    model = eco_lite(num_classes=101, num_segments=4, dropout=0.6, pretrained=path)
    assert model.fc.weight.shape == (101, 512)
    assert torch.equal(model.net3d.res5.res5b_bn.running_var, lite_source.net3d.res5.res5b_bn.running_var)


# --- this project's checkpoints ----------------------------------------------------------------------------------


def test_project_checkpoint_directory_and_file(tmp_path: Path, lite_source: ECO) -> None:
    run = _write_project(tmp_path / "epoch_3", lite_source, [f"class {i}" for i in range(7)])
    for target in (run, run / "checkpoint.pt"):
        model = ECO(variant="lite", num_classes=7, num_segments=4, dropout=0.3)
        report = load_weights(model, target)
        assert report.layout == "project" and report.loaded == 216 and not report.head_reinitialized
        assert all(torch.equal(v, lite_source.state_dict()[k]) for k, v in model.state_dict().items())
    ckpt = read_checkpoint(run)
    labels = tuple(f"class {i}" for i in range(7))
    assert (ckpt.layout, ckpt.stored["epoch"], ckpt.label_names) == ("project", 3, labels)
    report = load_weights(ECO(variant="lite", num_classes=7, num_segments=4, dropout=0.3), ckpt, name="run/epoch_3")
    assert report.path == "run/epoch_3" and report.layout == "project"
    raw = torch.load(run / "checkpoint.pt", weights_only=True)  # a checkpoint dict in memory loads the same way
    report = load_weights(ECO(variant="lite", num_classes=7, num_segments=4, dropout=0.3), raw, name="in memory")
    assert report.path == "in memory" and report.loaded == 216

    rebuilt = _model_from_checkpoint(run)
    assert (rebuilt.variant, rebuilt.num_classes, rebuilt.num_segments, rebuilt.training) == ("lite", 7, 4, False)
    clip = _clip(5, t=4, size=112)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(clip), lite_source(clip), rtol=0, atol=0)


def test_checkpoint_uris_are_read_through_pyarrow(tmp_path: Path, lite_source: ECO) -> None:
    # model.pretrained may name object storage; file:// takes the same pyarrow.fs path as s3:// and gs://.
    run = _write_project(tmp_path / "run", lite_source, [str(i) for i in range(7)])
    official = _write_official(tmp_path / "eco.pth.tar", official_state_dict(lite_source))
    for uri, layout in ((run.as_uri(), "project"), ((run / "checkpoint.pt").as_uri(), "project"),
                        (official.as_uri(), "official")):
        model = ECO(variant="lite", num_classes=7, num_segments=4, dropout=0.3)
        report = load_weights(model, uri)
        assert report.layout == layout and report.path.startswith("file://") and report.loaded == 216
        assert torch.equal(model.fc.weight, lite_source.fc.weight)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        read_checkpoint((tmp_path / "absent.pt").as_uri())


def test_project_checkpoint_of_the_other_variant_is_named(tmp_path: Path, lite_source: ECO) -> None:
    run = _write_project(tmp_path / "lite_run", lite_source, [str(i) for i in range(7)])
    model = eco_full(num_classes=7, num_segments=4)
    with pytest.raises(CheckpointError, match=r"ECO-Lite one.*: missing stream2d\.inception_3c\.inception_3c_3x3_"
                                              r"reduce\.weight.* and \d+ more"):
        load_weights(model, run)


def test_unknown_project_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "eco-pipeline/99", "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: unsupported checkpoint format 'eco-pipeline/99'"):
        load_weights(ECO(variant="lite", num_classes=3, num_segments=4, dropout=0.0), path)
