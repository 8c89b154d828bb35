"""Inference: `eco predict` on files, the authors' checkpoint layout, batch inference with Ray Data (resume, bad
files), and ECO's online mode. Real H.264 files, real checkpoints, a real local Ray instance.

The tiny task: one constant colour per class (red, green, blue) with per-pixel noise, 144x128 px, 4 segments at
112 px. The session fixture trains the classifier of a from-scratch ECO-Lite on it with a plain torch loop (the
backbone is a fixed random feature extractor, which separates three colours; training it end to end would cost
~5 s per step on 2 cores) and saves a project checkpoint with training's own writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.inference.online import WorkingMemory, merge_plan, spread

CLASSES = ("red", "green", "blue")
COLOURS = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 200)}
HEIGHT, WIDTH = 128, 144  # short side 128 -> centre crop 112
SEGMENTS, SHORT_SIDE, CROP = 4, 128, 112


def _colour_frames(colour, frames: int, seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(colour, np.int16)
    noise = rng.integers(-12, 13, size=(frames, height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _write_video(path: Path, colour, frames: int, seed: int, fps: int = 8) -> Path:
    from pipeline.data.encode import write_video

    return write_video(path, _colour_frames(colour, frames, seed), fps=fps)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """Videos (2 per class), and a project checkpoint trained on the colour task."""
    from pipeline.config import Config
    from pipeline.data.transforms import normalize
    from pipeline.model import eco_lite
    from pipeline.training.checkpoint import build_state, save_checkpoint

    root = tmp_path_factory.mktemp("inference")
    videos = {}
    for c, name in enumerate(CLASSES):
        for k in range(2):
            videos[f"{name}_{k}"] = (_write_video(root / "videos" / f"{name}_{k}.mp4", COLOURS[name], 12,
                                                  seed=10 * c + k), name)

    # The checkpoint's preprocessing differs from the defaults (256/224/"eco") on every field, so a predictor that
    # ignored it would feed the model different inputs.
    cfg = Config().replace({"model.num_segments": SEGMENTS, "model.dropout": 0.0, "data.short_side": SHORT_SIDE,
                            "data.crop_size": CROP, "data.normalization": "imagenet"})
    torch.manual_seed(0)
    model = eco_lite(num_classes=len(CLASSES), num_segments=SEGMENTS, dropout=0.0).eval()
    clips = np.stack([_colour_frames(COLOURS[n], SEGMENTS, seed=100 + 10 * c + k, height=CROP, width=CROP)
                      for c, n in enumerate(CLASSES) for k in range(3)])  # (9, T, 112, 112, 3)
    labels = torch.arange(len(CLASSES)).repeat_interleave(3)
    x = normalize(torch.from_numpy(clips), cfg.data.normalization)  # (9, T, 3, 112, 112)
    with torch.no_grad():
        feats = model.forward_features(x)  # (9, 512)
    norm = feats.norm(dim=1).mean()  # train on unit-scale features, fold the scale into the saved classifier
    fc = torch.nn.Linear(feats.shape[1], len(CLASSES))
    opt = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(fc(feats / norm), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"the colour task did not train (loss {loss.item():.3f})"
    with torch.no_grad():
        model.fc.weight.copy_(fc.weight / norm)
        model.fc.bias.copy_(fc.bias)
        logits = model(x)
    assert logits.argmax(1).tolist() == labels.tolist()

    state = build_state(model, None, epoch=1, step=200, config=cfg.to_dict(), label_names=list(CLASSES),
                        data_seed=0, metrics={"val_top1": 1.0})
    ckpt = save_checkpoint(root / "ckpt", state)
    return {"root": root, "videos": videos, "checkpoint": ckpt, "model": model, "config": cfg}


def _bad_file(root: Path) -> Path:
    bad = root / "bad" / "notes.mp4"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("this is a text file renamed to .mp4\n")
    return bad


# -- predict ---------------------------------------------------------------------------------------------------------


def test_eco_predict_right_labels_and_per_file_errors(tiny_task, capsys):
    from pipeline.cli import main

    videos = [str(p) for p, _ in tiny_task["videos"].values()]
    bad = str(_bad_file(tiny_task["root"]))
    code = main(["predict", videos[0], bad, *videos[1:], "--checkpoint", str(tiny_task["checkpoint"]),
                 "--top-k", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # one file failed; the others are still predicted
    assert out["preprocessing"] == {"num_segments": SEGMENTS, "short_side": SHORT_SIDE, "crop_size": CROP,
                                    "normalization": "imagenet"}
    results = {r["path"]: r for r in out["results"]}
    assert [r["path"] for r in out["results"]] == [videos[0], bad, *videos[1:]]
    assert results[bad]["error"] == "not_a_video" and "top_k" not in results[bad]
    for path, label in tiny_task["videos"].values():
        top = results[str(path)]["top_k"]
        assert len(top) == 2 and top[0]["label"] == label, (path, top)
        assert top[0]["prob"] > 0.5 and top[0]["prob"] >= top[1]["prob"]
        assert top[0]["label_id"] == CLASSES.index(label)


def test_predictor_uses_checkpoint_preprocessing_and_features(tiny_task):
    from pipeline.data.decode import decode_frames, probe
    from pipeline.data.sampling import eval_indices
    from pipeline.data.transforms import eval_transform, normalize
    from pipeline.inference import Predictor

    path, _ = tiny_task["videos"]["green_1"]
    with Predictor.from_checkpoint(tiny_task["checkpoint"], device="cpu") as predictor:
        (result,) = predictor.predict([path], top_k=3, features=True)
    # The same video through the checkpoint's preprocessing, computed here step by step, and the model in memory.
    n = probe(str(path)).num_frames
    frames = decode_frames(str(path), eval_indices(n, SEGMENTS), short_side=SHORT_SIDE, num_frames=n)
    clip = torch.from_numpy(np.asarray(eval_transform(frames, short_side=SHORT_SIDE, crop_size=CROP)))
    x = normalize(clip, "imagenet")  # (1, T, 3, 112, 112)
    with torch.no_grad():
        feature = tiny_task["model"].forward_features(x)[0]
        probs = torch.softmax(tiny_task["model"](x), dim=1)[0]
    assert result.ok and result.labels[0] == "green" and len(result.labels) == 3
    assert result.feature.shape == (512,)
    np.testing.assert_allclose(result.feature, feature.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probs, probs[list(result.label_ids)].numpy(), rtol=1e-4, atol=1e-6)


def test_official_layout_checkpoint_gives_kinetics_top_k(tiny_task, tmp_path):
    from pipeline.data.decode import decode_frames, probe
    from pipeline.data.sampling import eval_indices
    from pipeline.data.transforms import eval_transform, normalize
    from pipeline.inference import OFFICIAL_PREPROCESSING, Predictor
    from pipeline.labels import kinetics400_labels
    from pipeline.model import eco_lite, project_to_official

    torch.manual_seed(1)
    model = eco_lite(num_classes=400, num_segments=16).eval()
    # The authors' file: a legacy (pre-zip) pickle of an nn.DataParallel state dict plus training entries.
    official = tmp_path / "ECO_Lite_rgb_model_Kinetics.pth.tar"
    torch.save({"epoch": 40, "arch": "ECO", "best_prec1": 0.6, "lr": 0.001,
                "state_dict": project_to_official(model.state_dict())},
               official, _use_new_zipfile_serialization=False)

    path, _ = tiny_task["videos"]["red_0"]
    with Predictor.from_checkpoint(official, device="cpu") as predictor:
        assert predictor.preprocessing == OFFICIAL_PREPROCESSING
        assert (OFFICIAL_PREPROCESSING.num_segments, OFFICIAL_PREPROCESSING.short_side,
                OFFICIAL_PREPROCESSING.crop_size, OFFICIAL_PREPROCESSING.normalization) == (16, 256, 224, "eco")
        assert predictor.label_names == tuple(kinetics400_labels())
        (result,) = predictor.predict([path], top_k=5)

    n = probe(str(path)).num_frames
    frames = decode_frames(str(path), eval_indices(n, 16), short_side=256, num_frames=n)
    clip = torch.from_numpy(np.asarray(eval_transform(frames, short_side=256, crop_size=224)))
    with torch.no_grad():
        probs = torch.softmax(model(normalize(clip, "eco")), dim=1)[0]
    expected = torch.topk(probs, 5)
    names = kinetics400_labels()
    assert len(names) == 400 and names[0] == "abseiling"
    assert result.label_ids == tuple(expected.indices.tolist())
    assert result.labels == tuple(names[i] for i in expected.indices.tolist())
    np.testing.assert_allclose(result.probs, expected.values.numpy(), rtol=1e-4, atol=1e-7)
    assert list(result.probs) == sorted(result.probs, reverse=True)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    from pipeline.inference.predictor import describe_checkpoint

    with pytest.raises(ValueError, match="x.pt: not a model checkpoint: top-level keys weights, optimizer") as e:
        describe_checkpoint({"weights": {}, "optimizer": {}}, "x.pt")
    assert e.value.reason == "not_a_checkpoint"


# -- batch inference -------------------------------------------------------------------------------------------------


def _manifest(tiny_task, directory: Path) -> tuple[Path, list[str], list[str]]:
    from pipeline.data.manifest import MANIFEST_SCHEMA

    rows = []
    for vid, (path, label) in tiny_task["videos"].items():
        rows.append({"video_id": vid, "path": str(path), "label": CLASSES.index(label), "label_name": label,
                     "split": "test", "num_frames": 12, "fps": 8.0, "width": WIDTH, "height": HEIGHT,
                     "duration": 1.5, "codec": "h264", "size_bytes": path.stat().st_size})
    # Files that went bad after `eco prepare` accepted them: replaced by text, and deleted.
    bad = _bad_file(directory)
    for vid, path in (("bad_text", bad), ("bad_missing", directory / "gone.mp4")):
        rows.append({**rows[0], "video_id": vid, "path": str(path)})
    manifest = directory / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    return manifest, list(tiny_task["videos"]), ["bad_missing", "bad_text"]


def test_batch_predict_two_actors_resume_and_bad_files(tiny_task, tmp_path, ray_session, caplog, monkeypatch):
    import logging
    import re

    from pipeline.inference import batch_predict, read_predictions

    manifest, good, bad = _manifest(tiny_task, tmp_path)
    out = tmp_path / "preds.parquet"
    ckpt = tiny_task["checkpoint"]

    # An interrupted run: stop after the first part has been written.
    first = batch_predict(manifest, ckpt, out, top_k=2, features=True, actors=2, batch_size=2,
                          decode_batch_size=2, rows_per_part=2, max_parts=1)
    assert not first.complete and first.parts == 1
    done_before = read_predictions(out).num_rows + read_predictions(out, errors=True).num_rows
    assert 1 <= done_before <= len(good) + len(bad)

    # Resume: only the rest is processed, with progress lines (not a terminal: plain lines, here one per part)
    # counting up to the videos left (none when the interrupted run's pipeline had already written every part).
    monkeypatch.setenv("ECO_PROGRESS_INTERVAL_S", "0")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        second = batch_predict(manifest, ckpt, out, top_k=2, features=True, actors=2, batch_size=2,
                               decode_batch_size=2, rows_per_part=2)
    # A part whose task was running when the first run stopped may land after it returned: the resume skips
    # whatever is on disk when it starts.
    assert second.complete and second.skipped >= done_before
    left = len(good) + len(bad) - second.skipped
    assert second.predicted + second.failed == left
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    counts = [int(re.match(rf"predict: (\d+)/{left} videos", line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[-1:] == ([left] if left else [])

    preds = read_predictions(out)
    assert sorted(preds["video_id"].to_pylist()) == sorted(good)  # every row exactly once
    for row in preds.to_pylist():
        label = tiny_task["videos"][row["video_id"]][1]
        assert row["label"] == label and row["labels"][0] == label and len(row["labels"]) == 2
        assert row["label_ids"][0] == CLASSES.index(label) and row["prob"] == pytest.approx(row["probs"][0])
        assert len(row["feature"]) == 512 and np.isfinite(row["feature"]).all()
    errors = read_predictions(out, errors=True)
    assert sorted(errors["video_id"].to_pylist()) == bad
    assert dict(zip(errors["video_id"].to_pylist(), errors["reason"].to_pylist())) == {
        "bad_text": "not_a_video", "bad_missing": "missing"}
    # pyarrow reads the output directory as the predictions table alone (the errors live under "_errors").
    assert pq.read_table(out).num_rows == len(good)

    # Nothing left: a re-run writes nothing (and starts no pipeline).
    third = batch_predict(manifest, ckpt, out, top_k=2, features=True, actors=2)
    assert (third.complete, third.predicted, third.failed, third.parts) == (True, 0, 0, 0)
    assert third.skipped == third.manifest_rows == len(good) + len(bad)


# -- online ----------------------------------------------------------------------------------------------------------


def test_merge_plan_keeps_half_and_spans_the_video():
    # Filling up: everything stays while it fits, then the memory fills to N exactly.
    assert [a.tolist() for a in merge_plan(0, 4, 8)] == [[], [0, 1, 2, 3]]
    old, new = merge_plan(6, 4, 8)
    assert len(old) + len(new) == 8 and len(new) == 4 and old[0] == 0 and new[-1] == 3
    # Full memory: half old (evenly spaced from the oldest), half new (evenly spaced up to the newest).
    old, new = merge_plan(8, 8, 8)
    assert old.tolist() == [0, 2, 5, 7] and new.tolist() == [0, 2, 5, 7]
    old, new = merge_plan(16, 2, 16)  # fewer new frames than half: all of them
    assert new.tolist() == [0, 1] and len(old) == 14 and old[0] == 0 and old[-1] == 15
    assert spread(5, 1).tolist() == [0] and spread(5, 1, newest=True).tolist() == [4]

    mem = WorkingMemory(8)
    for i in range(100):
        mem.push(i, np.full((2, 2, 3), i, np.uint8))
        if mem.queued == 8:
            mem.update()
            idx = mem.indices
            assert len(idx) == 8 and idx == sorted(set(idx)) and idx[0] == 0 and idx[-1] == i
            if i >= 15:  # once full, half of the memory is the newest frames
                assert sum(j > i - 8 for j in idx) == 4
    assert mem.clip().shape == (8, 2, 2, 3) and mem.clip()[0, 0, 0, 0] == 0
    short = WorkingMemory(4)
    short.push(7, np.full((1, 1, 3), 7, np.uint8))
    short.update()
    assert short.clip()[:, 0, 0, 0].tolist() == [7, 7, 7, 7]  # repeats before the memory is full


def test_online_timeline_monotonic_and_final_matches_offline(tiny_task, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.inference import Predictor

    video = _write_video(tmp_path / "blue_long.mp4", COLOURS["blue"], 22, seed=7, fps=10)
    out = tmp_path / "online"
    code = main(["predict", "--online", str(video), "--checkpoint", str(tiny_task["checkpoint"]), "--every", "4",
                 "--top-k", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "frames/s" in printed
    timeline = json.loads((out / "timeline.json").read_text())
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    updates = timeline["timeline"]
    # A prediction every 4 frames, and one for the last two frames of the stream.
    assert [u["frame"] for u in updates] == [3, 7, 11, 15, 19, 21]
    times = [u["time_s"] for u in updates]
    assert times == sorted(times) and len(set(times)) == len(times) and times[0] == pytest.approx(0.3)
    assert all(u["latency_ms"] > 0 for u in updates)
    for u in updates:
        memory = u["memory_frames"]
        assert len(memory) <= SEGMENTS and memory == sorted(memory)
        assert memory[0] == 0 and memory[-1] == u["frame"]  # the memory spans the whole video so far
    assert timeline["frames"] == 22 and timeline["memory"] == SEGMENTS and timeline["throughput_fps"] > 0

    with Predictor.from_checkpoint(tiny_task["checkpoint"], device="cpu") as predictor:
        (offline,) = predictor.predict([video], top_k=3)
    assert timeline["final"][0]["label"] == offline.labels[0] == "blue"


def test_predict_decodes_rotated_and_av1_videos_as_displayed(tiny_task, tmp_path):
    """Issue 13: a phone video (frames stored sideways + a 90 degree display matrix) and an AV1 file (PyAV backend)
    reach the model as the same clip as an upright H.264 file of the same picture."""
    from pipeline.data.encode import available_codecs, write_video
    from pipeline.inference.predictor import Predictor
    from tests.videos import indexed_frames

    display = indexed_frames(12, width=128, height=160)  # portrait, as the phone shows it: (F, 160, 128, 3)
    stored = np.ascontiguousarray(np.rot90(display, k=-1, axes=(1, 2)))  # (F, 128, 160, 3) as the sensor wrote it
    upright = write_video(tmp_path / "upright.mp4", display, 8)
    paths = {"rotated": write_video(tmp_path / "phone.mp4", stored, 8, rotation=90)}
    if "libsvtav1" in available_codecs():
        paths["av1"] = write_video(tmp_path / "av1.mp4", display, 8, codec="libsvtav1")
    predictor = Predictor.from_checkpoint(str(tiny_task["checkpoint"]))
    try:
        want = predictor.load_clip(str(upright)).astype(np.int16)
        assert want.shape == (SEGMENTS, CROP, CROP, 3)
        for name, path in paths.items():
            got = predictor.load_clip(str(path))
            assert got.shape == want.shape, name
            assert np.abs(got - want).mean() < 4, name
        # The same stored pixels without the display matrix are far from it: the comparison sees orientation.
        sideways = predictor.load_clip(str(write_video(tmp_path / "sideways.mp4", stored, 8)))
        assert np.abs(sideways - want).mean() > 20
    finally:
        predictor.close()
