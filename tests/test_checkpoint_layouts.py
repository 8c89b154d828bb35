"""Every checkpoint layout through every entry point: what one loads, all load; what one refuses, all refuse, with
the same named reason.

Layouts, each written from small random weights: this project's (the training writer's directory), the authors'
file with and without nn.DataParallel's `module.` prefix, a bare state_dict of their names, and ECO-Full with its
1536-input head (`new_fc`, and `base_model.fc_final` as TSN names it without dropout). Entry points: the model
builders (`pretrained=`), `eco predict --checkpoint` on a real H.264 clip (the CLI's public function), the
Predictor that batch inference and evaluation actors hold, `read_checkpoint_info` (batch inference),
`eco evaluate` (up to the manifest, before Ray starts) and resume (`load_checkpoint`); and, on a local Ray instance,
a whole evaluation and batch inference of the authors' file without the `module.` prefix.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from pipeline.config import Config
from pipeline.inference.predictor import Predictor, read_checkpoint_info
from pipeline.model import BUILDERS, ECO, CheckpointError, checkpoint_io, eco_lite
from pipeline.training.checkpoint import build_state, load_checkpoint, save_checkpoint
from pipeline.training.evaluate import evaluate
from tests.test_weights import official_state_dict
from tests.videos import write_test_video

CLASSES = 6
LABELS = [f"class {i}" for i in range(CLASSES)]
SEGMENTS = 4
PROJECT_CONFIG = {"model.num_segments": SEGMENTS, "data.short_side": 128, "data.crop_size": 112,
                  "data.normalization": "imagenet"}


def _model(variant: str, seed: int) -> ECO:
    torch.manual_seed(seed)
    model = ECO(variant=variant, num_classes=CLASSES, num_segments=SEGMENTS, dropout=0.3).eval()
    with torch.no_grad():  # non-default BatchNorm statistics, so that buffers must load too
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def sources() -> dict[str, ECO]:
    return {"lite": _model("lite", 0), "full": _model("full", 1)}


def _official(model: ECO, *, prefix: bool, fc_final: bool = False) -> dict[str, torch.Tensor]:
    state = official_state_dict(model)  # module.base_model.* / module.new_fc.*, independently of the library
    if fc_final:
        state = {k.replace("module.new_fc.", "module.base_model.fc_final."): v for k, v in state.items()}
    return state if prefix else {k.removeprefix("module."): v for k, v in state.items()}


def _legacy(path: Path, obj: dict) -> Path:
    # As the authors' main.py saved it with PyTorch 0.4.1: a pre-zip pickle with training entries beside the weights.
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


# layout name -> (variant, what read() reports)
LAYOUTS = {
    "project": ("lite", "project"),
    "official": ("lite", "official"),
    "official-unprefixed": ("lite", "official"),
    "official-bare-unprefixed": ("lite", "official"),
    "official-full": ("full", "official"),
    "official-full-unprefixed-fc_final": ("full", "official"),
}


def _write(layout: str, root: Path, model: ECO) -> Path:
    entries = {"epoch": 40, "arch": "ECO", "best_prec1": 61.2, "lr": 0.001}
    if layout == "project":
        cfg = Config().replace(PROJECT_CONFIG)
        state = build_state(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=3, step=30,
                            config=cfg.to_dict(), label_names=LABELS, data_seed=0, metrics={"val_top1": 0.5})
        return save_checkpoint(root / "epoch_0003", state)
    if layout == "official-bare-unprefixed":
        return _legacy(root / "eco_bare.pth", _official(model, prefix=False))
    state = _official(model, prefix="unprefixed" not in layout, fc_final="fc_final" in layout)
    return _legacy(root / f"{layout}.pth.tar", {**entries, "state_dict": state})


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4", num_frames=24, width=96, height=64)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_entry_point_loads_the_layout(layout: str, sources: dict[str, ECO], video: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    variant, kind = LAYOUTS[layout]
    source = sources[variant]
    path = _write(layout, tmp_path, source)
    expected_labels = tuple(LABELS) if kind == "project" else tuple(f"class_{i}" for i in range(CLASSES))

    # The reader: layout, variant, classes, labels, preprocessing.
    read = checkpoint_io.read(path)
    assert (read.layout, read.variant, read.num_classes, read.label_names) == (kind, variant, CLASSES,
                                                                              expected_labels)
    assert read.preprocessing == (checkpoint_io.Preprocessing(SEGMENTS, 128, 112, "imagenet") if kind == "project"
                                  else checkpoint_io.OFFICIAL_PREPROCESSING)
    for key, value in source.state_dict().items():
        assert torch.equal(read.state_dict[key], value), key

    # The builders (model.pretrained): every tensor from the file.
    torch.manual_seed(123)
    built = BUILDERS[variant](num_classes=CLASSES, num_segments=SEGMENTS, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(built.state_dict()[key], value), key

    # Batch inference's and evaluation's view of it, and the Predictor their actors hold.
    info = read_checkpoint_info(path)
    assert (info.kind, info.variant, info.label_names, info.preprocessing) == (kind, variant, expected_labels,
                                                                                read.preprocessing)
    with Predictor.from_checkpoint(path, device="cpu") as predictor:
        for key, value in source.state_dict().items():
            assert torch.equal(predictor.model.state_dict()[key], value), key
    # `eco evaluate` reads the checkpoint, then compares its labels with the manifest's (a mismatch stops it before
    # Ray starts): reaching that comparison with the checkpoint's labels means the checkpoint was accepted.
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / "labels.json").write_text(json.dumps(["only one class"]))
    with pytest.raises(ValueError, match=rf"1 classes\) differs from the checkpoint's label map \({CLASSES} classes"):
        evaluate(path, manifest)

    # `eco predict --checkpoint` on a real clip: the same probabilities as the source model under the same
    # preprocessing.
    capsys.readouterr()
    assert main(["predict", str(video), "--checkpoint", str(path), "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (result,) = out["results"]
    with Predictor(source, expected_labels, read.preprocessing, device="cpu") as reference:
        (expected,) = reference.predict([video], top_k=3)
    assert [t["label"] for t in result["top_k"]] == list(expected.labels)
    assert [t["prob"] for t in result["top_k"]] == pytest.approx(list(expected.probs), abs=1e-5)

    # Resume reads the training state: this project's checkpoint.pt only, and says so for the authors' files.
    if kind == "project":
        state = load_checkpoint(path)
        assert (state["epoch"], state["step"], state["label_names"]) == (3, 30, LABELS) and state["optimizer"]
    else:
        with pytest.raises(CheckpointError, match="not a training state to resume from") as e:
            load_checkpoint(path)
        assert e.value.reason == "not_resumable"


# --- refusals: every entry point, the same reason -----------------------------------------------------------------


class _Payload:
    """Stands in for an object a malicious pickle would smuggle in."""


def _bad_files(root: Path, model: ECO) -> dict[str, tuple[Path, str]]:
    """name -> (file, the reason every entry point must give)."""
    text = root / "notes.txt"
    text.write_text("not a checkpoint\n")
    tensor = root / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    other = root / "other.pt"
    torch.save({"weights": {"a": torch.zeros(1)}}, other)
    future = root / "future" / "checkpoint.pt"
    future.parent.mkdir()
    torch.save({"format": "eco-pipeline/99", "model": {}}, future)
    unknown = root / "unknown.pth.tar"
    state = _official(model, prefix=True)
    state["module.base_model.inception_9z_1x1.weight"] = torch.zeros(1)
    _legacy(unknown, {"state_dict": state})
    headless = root / "headless.pth.tar"
    _legacy(headless, {"state_dict": {k: v for k, v in _official(model, prefix=True).items() if "new_fc" not in k}})
    truncated = root / "truncated.pth.tar"
    data = _legacy(root / "whole.pth.tar", {"state_dict": _official(model, prefix=False)}).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = root / "empty_run"
    empty.mkdir()
    unsafe = root / "unsafe.pth.tar"
    with unsafe.open("wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Payload()}, f, protocol=2)
    return {"text": (text, "unreadable"), "tensor": (tensor, "not_a_checkpoint"),
            "other dict": (other, "not_a_checkpoint"), "future format": (future.parent, "unsupported_format"),
            "unknown key": (unknown, "unknown_keys"), "no classifier": (headless, "incomplete"),
            "truncated": (truncated, "unreadable"), "empty directory": (empty, "not_a_checkpoint"),
            "pickled object": (unsafe, "unsafe")}


def test_every_entry_point_refuses_with_the_same_reason(sources: dict[str, ECO], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    entry_points = {
        "read": checkpoint_io.read,
        "eco_lite(pretrained=)": lambda p: eco_lite(num_classes=CLASSES, num_segments=SEGMENTS, pretrained=p),
        "Predictor.from_checkpoint": lambda p: Predictor.from_checkpoint(p, device="cpu"),
        "read_checkpoint_info": read_checkpoint_info,
        "evaluate": lambda p: evaluate(p, tmp_path / "no manifest"),
        "resume": load_checkpoint,
    }
    for name, (path, reason) in _bad_files(tmp_path, sources["lite"]).items():
        with pytest.raises(CheckpointError) as first:
            checkpoint_io.read(path)
        assert first.value.reason == reason, (name, str(first.value))
        assert Path(path).name in str(first.value), name
        for entry, call in entry_points.items():
            with pytest.raises(CheckpointError) as e:
                call(path)
            assert (e.value.reason, str(e.value)) == (reason, str(first.value)), (name, entry)
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "any.mp4"), "--checkpoint", str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"eco predict: error: {first.value}", name


# --- evaluation and batch inference end to end (Ray Data model actors) -------------------------------------------


def test_evaluate_and_batch_predict_run_the_unprefixed_authors_file(sources: dict[str, ECO], video: Path,
                                                                    tmp_path: Path, ray_session) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.manifest import MANIFEST_SCHEMA
    from pipeline.inference import batch_predict, read_predictions

    path = _write("official-unprefixed", tmp_path, sources["lite"])
    names = [f"class_{i}" for i in range(CLASSES)]
    # What the source model says about the clip under the authors' preprocessing (the Predictor's own decode).
    with Predictor(sources["lite"], names, checkpoint_io.OFFICIAL_PREPROCESSING, device="cpu") as reference:
        (expected,) = reference.predict([video], top_k=1)
    top = expected.label_ids[0]
    # The same clip twice: labelled with the model's answer, and with another class: top-1 is exactly 1/2.
    data = tmp_path / "data"
    data.mkdir()
    row = {"path": str(video), "split": "val", "num_frames": 24, "fps": 16.0, "width": 96, "height": 64,
           "duration": 1.5, "codec": "h264", "size_bytes": video.stat().st_size, "backend": "auto"}
    rows = [{**row, "video_id": "right", "label": top, "label_name": names[top]},
            {**row, "video_id": "wrong", "label": (top + 1) % CLASSES, "label_name": names[(top + 1) % CLASSES]}]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), data / "manifest.parquet")
    (data / "labels.json").write_text(json.dumps(names))

    report = evaluate(path, data, split="val", out_dir=tmp_path / "eval")
    assert (report["videos"], report["views"], report["top1"]) == (2, 2, 0.5)

    summary = batch_predict(data / "manifest.parquet", path, tmp_path / "preds", top_k=1, actors=1)
    assert summary.complete and (summary.predicted, summary.failed) == (2, 0)
    preds = read_predictions(tmp_path / "preds").to_pylist()
    assert {p["video_id"]: p["labels"][0] for p in preds} == {"right": names[top], "wrong": names[top]}
    assert [p["probs"][0] for p in preds] == pytest.approx([expected.probs[0]] * 2, abs=1e-5)
