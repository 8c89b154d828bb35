"""Manifests from every source type, with real videos (written by PyAV), probed on the session's Ray instance.

One small video tree per module: 3 classes x 4 H.264 clips plus broken files. The S3 test starts a real
S3-compatible server (moto's server mode) on localhost; pyarrow and the Ray workers reach it through the
AWS_* environment variables that prepare() forwards to its operators.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import manifest as m
from pipeline.data import sources
from pipeline.data.encode import write_audio_only, write_video

CLASSES = ("jump", "run", "swim")
PER_CLASS = 4
FRAMES, FPS, WIDTH, HEIGHT = 8, 8, 64, 48
# One probe actor: on 2-core CI machines process start-up, not probing, dominates these tiny trees.
PROBE = dict(probe_workers=1, probe_timeout_s=60)


def _frames(label: int, seed: int) -> np.ndarray:
    """Red tells the class and the video, green the frame (probe counts distinct frames, a still counts once)."""
    frames = np.full((FRAMES, HEIGHT, WIDTH, 3), 128, np.uint8)
    frames[..., 0] = 40 + 60 * label + seed
    frames[..., 1] = (40 + 20 * np.arange(FRAMES))[:, None, None]
    return frames


def _write_tree(root: Path) -> dict[str, Path]:
    """root/<class>/<class>_<i>.mp4 plus broken files; returns {kind: path} of the broken ones."""
    for label, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            write_video(root / name / f"{name}_{i}.mp4", _frames(label, i), FPS)
    bad = {
        "empty": root / "run" / "empty.mp4",
        "text": root / "swim" / "notes.mp4",
        "random": root / "jump" / "noise.avi",
        "audio": root / "run" / "tone.mp4",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a video\n" * 20)
    bad["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write_audio_only(bad["audio"], seconds=0.5)
    (root / "README.txt").write_text("ignored: not in a class folder and not a video")
    (root / "jump" / "labels.json").write_text("{}")  # ignored: not a video extension
    return bad


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("videos")
    return root, _write_tree(root)


def _good_paths(root: Path) -> set[str]:
    return {str(root / c / f"{c}_{i}.mp4") for c in CLASSES for i in range(PER_CLASS)}


@pytest.fixture(scope="module")
def folder_prepared(ray_session, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    # Two probe actors: the probe runs in parallel.
    summary = m.prepare(sources.FolderSource(tree[0]), out, val_fraction=0.25, seed=3, probe_workers=2)
    return out, summary


def test_folder_source_manifest_quarantine_labels_and_summary(tree, folder_prepared):
    root, bad = tree
    out, summary = folder_prepared
    tmp_path = out.parent

    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert table.schema.equals(m.MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert {r["path"] for r in rows} == _good_paths(root)
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == sorted(CLASSES)
    for r in rows:
        assert r["label_name"] == r["path"].split(os.sep)[-2]
        assert r["label"] == sorted(CLASSES).index(r["label_name"])
        assert r["video_id"] == f"{r['label_name']}/{Path(r['path']).name}"
        assert (r["num_frames"], r["width"], r["height"], r["codec"]) == (FRAMES, WIDTH, HEIGHT, "h264")
        assert r["fps"] == pytest.approx(FPS)
        assert r["duration"] == pytest.approx(FRAMES / FPS, abs=0.2)
        assert r["size_bytes"] == os.path.getsize(r["path"])
    # Stratified: 4 per class at 0.25 -> exactly one val video per class.
    for name in CLASSES:
        assert sorted(r["split"] for r in rows if r["label_name"] == name) == ["train", "train", "train", "val"]
    # Sorted by (split, label, video_id).
    keys = [(m.SPLITS.index(r["split"]), r["label"], r["video_id"]) for r in rows]
    assert keys == sorted(keys)

    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert quarantine.schema.equals(m.QUARANTINE_SCHEMA)
    reasons = {Path(r["path"]).name: r["reason"] for r in quarantine.to_pylist()}
    assert set(reasons) == {p.name for p in bad.values()}
    assert reasons["empty.mp4"] == "empty_file"
    assert reasons["notes.mp4"] == "not_a_video"
    assert reasons["noise.avi"] == "not_a_video"
    assert reasons["tone.mp4"] == "no_video_stream"
    assert all(r["detail"] for r in quarantine.to_pylist())

    assert summary.accepted == 12
    assert summary.rejected == {"empty_file": 1, "no_video_stream": 1, "not_a_video": 2}
    assert summary.splits == {"train": 9, "val": 3}
    assert summary.num_classes == 3
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["accepted"] == 12 and on_disk["rejected"] == summary.rejected
    text = summary.describe()
    assert "12 videos" in text and "not_a_video: 2" in text and "val: 3" in text
    assert str(tmp_path / "out" / "manifest.parquet") in text

    # read_manifest / read_labels, from the directory or the file.
    assert m.read_manifest(tmp_path / "out").equals(table)
    val = m.read_manifest(tmp_path / "out" / "manifest.parquet", split="val")
    assert val.num_rows == 3 and set(val.column("split").to_pylist()) == {"val"}
    assert m.read_labels(tmp_path / "out") == sorted(CLASSES)
    assert m.read_labels(tmp_path / "out" / "manifest.parquet") == sorted(CLASSES)


def test_ray_job_entrypoint_equals_eco_prepare(ray_session, tree, folder_prepared, tmp_path, capsys, caplog,
                                               monkeypatch):
    """`python jobs/prepare.py ARGS` parses like `eco prepare ARGS` (run in-process on the session's Ray); its
    output (not a terminal) has plain progress lines counting up to the total, and the summary once."""
    import logging
    import re
    import runpy

    monkeypatch.setenv("ECO_PROGRESS_INTERVAL_S", "0")  # a line at every update
    job = runpy.run_path(str(Path(__file__).resolve().parents[1] / "jobs" / "prepare.py"))
    with caplog.at_level(logging.INFO):
        assert job["run"](["folder", str(tree[0]), "--out", str(tmp_path / "job"), "--val-fraction", "0.25",
                           "--seed", "3"]) == 0
    assert capsys.readouterr().out.count("prepared 12 videos in 3 classes (4 rejected)") == 1
    logged = [r.getMessage() for r in caplog.records]
    assert not [line for line in logged if "prepared 12 videos" in line]  # printed once, not logged as well
    probed = [re.fullmatch(r"probe: (\d+)/(\d+) videos \(\d+%\), .* left", line) for line in logged
              if line.startswith("probe: ")]
    counts = [int(p.group(1)) for p in probed]
    assert counts == sorted(counts) and counts[-1] == int(probed[-1].group(2)) >= 12
    assert m.read_manifest(tmp_path / "job").equals(m.read_manifest(folder_prepared[0]))


def test_split_is_deterministic_from_seed(ray_session, tree, folder_prepared, tmp_path):
    root, _ = tree
    m.prepare(sources.FolderSource(root), tmp_path / "again", val_fraction=0.25, seed=3, **PROBE)
    first, again = (m.read_manifest(p).to_pylist() for p in (folder_prepared[0], tmp_path / "again"))
    assert {r["video_id"]: r["split"] for r in first} == {r["video_id"]: r["split"] for r in again}
    # The split is stratified_split of the accepted videos per class.
    by_class = {c: [f"{c}/{c}_{i}.mp4" for i in range(PER_CLASS)] for c in CLASSES}
    assert {r["video_id"]: r["split"] for r in first} == m.stratified_split(by_class, 0.25, 3)


def test_stratified_split_proportions_per_class():
    by_class = {"a": [f"a{i}" for i in range(10)], "b": [f"b{i}" for i in range(20)],
                "c": [f"c{i}" for i in range(5)], "d": ["d0", "d1"], "e": ["e0"]}
    split = m.stratified_split(by_class, 0.2, seed=0)
    val = {c: sum(split[v] == "val" for v in ids) for c, ids in by_class.items()}
    # round(n * 0.2), at least one when a class has two or more videos, never the whole class.
    assert val == {"a": 2, "b": 4, "c": 1, "d": 1, "e": 0}
    assert split == m.stratified_split(by_class, 0.2, seed=0)
    assert split != m.stratified_split(by_class, 0.2, seed=1)
    # Adding a class does not move the videos of the others.
    more = dict(by_class, f=[f"f{i}" for i in range(7)])
    assert {k: v for k, v in m.stratified_split(more, 0.2, seed=0).items() if not k.startswith("f")} == split
    with pytest.raises(m.ManifestError, match="val_fraction"):
        m.stratified_split(by_class, 1.0, seed=0)


def test_folder_with_split_folders(ray_session, tree, tmp_path):
    root, _ = tree
    split_root = tmp_path / "by_split"
    for name in CLASSES:
        (split_root / "train" / name).mkdir(parents=True)
        (split_root / "validation" / name).mkdir(parents=True)
        shutil.copy(root / name / f"{name}_0.mp4", split_root / "train" / name / "a.mp4")
        shutil.copy(root / name / f"{name}_1.mp4", split_root / "validation" / name / "b.mp4")
    summary = m.prepare(sources.FolderSource(split_root), tmp_path / "out", **PROBE)
    rows = m.read_manifest(tmp_path / "out").to_pylist()
    assert summary.splits == {"train": 3, "val": 3}
    assert {(r["video_id"], r["split"], r["label_name"]) for r in rows} == (
        {(f"train/{c}/a.mp4", "train", c) for c in CLASSES} | {(f"validation/{c}/b.mp4", "val", c) for c in CLASSES})


def test_kinetics_source(ray_session, tree, tmp_path):
    root, _ = tree
    clips = tmp_path / "clips"
    annotations = tmp_path / "kinetics.csv"
    rows = [("playing guitar", "abc-DEF_123", 14, 24, "train", "run/run_0.mp4"),
            ("playing guitar", "xyz", 0, 10, "train", "run/run_1.mp4"),
            ("abseiling", "-Q_9", 5, 15, "validate", "jump/jump_0.mp4"),
            ("abseiling", "gone", 30, 40, "train", None),  # taken down: not downloaded
            ("abseiling", "k2", 1, 11, "train", "jump/jump_1.mp4")]
    with open(annotations, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for label, yid, start, end, split, src in rows:
            w.writerow([label, yid, start, end, split])
            if src:
                # Downloaders put clips in class folders (with or without spaces) or flat.
                sub = clips / label.replace(" ", "_") if yid != "xyz" else clips
                sub.mkdir(parents=True, exist_ok=True)
                shutil.copy(root / src, sub / f"{yid}_{start:06d}_{end:06d}.mp4")
    listing = sources.KineticsSource(annotations, clips).list()
    assert listing.label_names is None  # the default label map: sorted names
    # A pinned label list (e.g. the 400 Kinetics names) keeps its numbering.
    summary = m.prepare(sources.KineticsSource(annotations, clips, labels=["zumba", "playing guitar", "abseiling"]),
                        tmp_path / "out", **PROBE)
    table = m.read_manifest(tmp_path / "out")
    got = {r["video_id"]: (r["label_name"], r["label"], r["split"]) for r in table.to_pylist()}
    assert got == {"abc-DEF_123_000014_000024": ("playing guitar", 1, "train"),
                   "xyz_000000_000010": ("playing guitar", 1, "train"),
                   "-Q_9_000005_000015": ("abseiling", 2, "val"),
                   "k2_000001_000011": ("abseiling", 2, "train")}
    assert m.read_labels(tmp_path / "out") == ["zumba", "playing guitar", "abseiling"]
    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert [(Path(q["path"]).name, q["reason"]) for q in quarantine] == [("gone_000030_000040.mp4", "missing")]
    assert "line 5" in quarantine[0]["detail"]
    assert summary.rejected == {"missing": 1}

    bad = tmp_path / "bad.csv"
    bad.write_text("label,youtube_id,time_start\nx,y,1\n")
    with pytest.raises(m.ManifestError, match=r"bad\.csv.*missing column\(s\) time_end"):
        sources.KineticsSource(bad, clips).list()


def test_ucf101_split_files(ray_session, tree, tmp_path):
    root, _ = tree
    videos, splits = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    # UCF101 class names are in classInd order (1-based), not necessarily sorted.
    names = {"Swimming": "swim", "Jumping": "jump", "Running": "run"}
    (splits / "classInd.txt").write_text("1 Swimming\n2 Jumping\n3 Running\n")
    train, test = [], []
    for cls, src in names.items():
        (videos / cls).mkdir(parents=True)
        for i in range(3):
            name = f"v_{cls}_g0{i}_c01.avi"
            shutil.copy(root / src / f"{src}_{i}.mp4", videos / cls / name)
            (train if i < 2 else test).append(f"{cls}/{name}")
    index = {cls: i + 1 for i, cls in enumerate(names)}
    (splits / "trainlist01.txt").write_text("".join(f"{p} {index[p.split('/')[0]]}\r\n" for p in train))
    (splits / "testlist01.txt").write_text("".join(f"{p}\n" for p in test))
    summary = m.prepare(sources.UCF101Source(splits, videos, split_number=1), tmp_path / "out", **PROBE)
    assert m.read_labels(tmp_path / "out") == ["Swimming", "Jumping", "Running"]
    rows = m.read_manifest(tmp_path / "out").to_pylist()
    assert {(r["video_id"], r["label"], r["split"]) for r in rows} == (
        {(p, index[p.split("/")[0]] - 1, "train") for p in train}
        | {(p, index[p.split("/")[0]] - 1, "test") for p in test})
    assert summary.splits == {"test": 3, "train": 6}

    (splits / "trainlist02.txt").write_text(f"{train[0]} 7\n")
    (splits / "testlist02.txt").write_text("")
    with pytest.raises(m.ManifestError, match=r"trainlist02\.txt line 1: label index 7.*1-based"):
        sources.UCF101Source(splits, videos, split_number=2).list()
    with pytest.raises(m.ManifestError, match=r"testlist03\.txt: file not found"):
        (splits / "trainlist03.txt").write_text(f"{train[0]} 1\n")
        sources.UCF101Source(splits, videos, split_number=3).list()


def test_table_sources_csv_names_and_parquet_ints(ray_session, tree, tmp_path):
    root, bad = tree
    # CSV with class names, relative paths and no split; one label that the pinned label list lacks.
    table_dir = tmp_path / "t"
    table_dir.mkdir()
    shutil.copytree(root / "jump", table_dir / "jump")
    with open(table_dir / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in range(PER_CLASS):
            w.writerow([f"jump/jump_{i}.mp4", "jump"])
        w.writerow([str(root / "run" / "run_0.mp4"), "run"])
        w.writerow([str(root / "swim" / "swim_0.mp4"), "dance"])
    summary = m.prepare(sources.TableSource(table_dir / "list.csv", labels=["jump", "run"]), tmp_path / "csv",
                        val_fraction=0.25, **PROBE)
    rows = m.read_manifest(tmp_path / "csv").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(
        [str(table_dir / "jump" / f"jump_{i}.mp4") for i in range(PER_CLASS)] + [str(root / "run" / "run_0.mp4")])
    assert summary.rejected == {"unknown_label": 1}
    assert summary.splits == {"train": 4, "val": 1}  # jump: 1 of 4 to val; run: a single video stays in train

    # Parquet with integer labels and a split column (including a broken file).
    paths = [str(root / "swim" / "swim_0.mp4"), str(root / "jump" / "jump_2.mp4"), str(bad["empty"])]
    pq.write_table(pa.table({"path": paths, "label": [2, 0, 1], "split": ["train", "val", "train"]}),
                   tmp_path / "list.parquet")
    summary = m.prepare(sources.TableSource(tmp_path / "list.parquet"), tmp_path / "pq", **PROBE)
    assert m.read_labels(tmp_path / "pq") == ["0", "1", "2"]
    got = {r["path"]: (r["label"], r["split"]) for r in m.read_manifest(tmp_path / "pq").to_pylist()}
    assert got == {paths[0]: (2, "train"), paths[1]: (0, "val")}
    assert summary.rejected == {"empty_file": 1}


def test_hanging_and_crashing_probes_are_quarantined(ray_session, tree, tmp_path):
    from tests.faults import faulty_probe  # hangs on *HANG* files, segfaults on *CRASH* files

    root, _ = tree
    paths = [root / "jump" / "jump_0.mp4", tmp_path / "HANG.mp4", tmp_path / "CRASH.mp4", root / "run" / "run_0.mp4"]
    for p in paths[1:3]:
        shutil.copy(paths[0], p)
    pq.write_table(pa.table({"path": [str(p) for p in paths], "label": ["a", "a", "b", "b"]}), tmp_path / "t.parquet")
    summary = m.prepare(sources.TableSource(tmp_path / "t.parquet"), tmp_path / "out", probe_fn=faulty_probe,
                        probe_workers=1, probe_timeout_s=10)
    assert sorted(m.read_manifest(tmp_path / "out").column("path").to_pylist()) == [str(paths[0]), str(paths[3])]
    quarantine = {Path(q["path"]).name: q["reason"]
                  for q in pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()}
    assert quarantine == {"HANG.mp4": "timeout", "CRASH.mp4": "crashed"}
    assert summary.rejected == {"crashed": 1, "timeout": 1}


def test_clear_errors(ray_session, tmp_path):
    (tmp_path / "t.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(m.ManifestError, match=r"t\.csv: missing column\(s\) path"):
        sources.TableSource(tmp_path / "t.csv").list()
    (tmp_path / "empty").mkdir()
    with pytest.raises(m.ManifestError, match=r"empty: no videos found"):
        sources.FolderSource(tmp_path / "empty").list()
    with pytest.raises(m.ManifestError, match=r"nowhere: directory not found"):
        sources.FolderSource(tmp_path / "nowhere").list()
    (tmp_path / "s.csv").write_text("path,label,split\na.mp4,x,holdout\n")
    with pytest.raises(m.ManifestError, match=r"s\.csv row 1: unknown split 'holdout'"):
        sources.TableSource(tmp_path / "s.csv").list()
    pq.write_table(pa.table({"video_id": ["a"], "path": ["a.mp4"]}), tmp_path / "manifest.parquet")
    with pytest.raises(m.ManifestError, match=r"manifest\.parquet: missing manifest column\(s\) label, label_name"):
        m.read_manifest(tmp_path)
    with pytest.raises(m.ManifestError, match=r"labels\.json: file not found"):
        m.read_labels(tmp_path)
    with pytest.raises(m.ManifestError, match="normalize_gop must be >= 1"):
        m.prepare(sources.FolderSource(tmp_path), tmp_path / "out", normalize_gop=0)


def test_normalize_reencodes_into_the_output(ray_session, tree, tmp_path):
    root, bad = tree
    paths = [str(root / "jump" / "jump_0.mp4"), str(root / "swim" / "swim_1.mp4"), str(bad["text"])]
    pq.write_table(pa.table({"path": paths, "label": ["jump", "swim", "swim"], "split": ["train", "val", "val"]}),
                   tmp_path / "t.parquet")
    summary = m.prepare(sources.TableSource(tmp_path / "t.parquet"), tmp_path / "out", normalize_short_side=32,
                        normalize_gop=4, **PROBE)
    rows = {r["video_id"]: r for r in m.read_manifest(tmp_path / "out").to_pylist()}
    assert set(rows) == set(paths[:2])
    for source, r in rows.items():
        assert r["path"] == str(tmp_path / "out" / "videos_normalized" / source.lstrip("/"))
        # 64x48 -> short side 32 (43 px wide, cropped to even 42), all frames kept.
        assert (r["width"], r["height"], r["num_frames"]) == (42, 32, FRAMES)
        assert r["size_bytes"] == os.path.getsize(r["path"])
    assert summary.rejected == {"not_a_video": 1}
    n = summary.normalized
    assert (n["videos"], n["short_side"], n["gop"]) == (2, 32, 4)
    assert n["bytes"] == sum(r["size_bytes"] for r in rows.values())
    assert n["size_ratio"] == pytest.approx(n["bytes"] / sum(os.path.getsize(p) for p in paths[:2]))
    assert "normalized 2 videos" in summary.describe()


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3-compatible server (moto in server mode) on a free localhost port, with a bucket."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # pyarrow's S3FileSystem and boto3 read these; prepare() and the pipeline forward them to Ray workers.
    for key, value in {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="videos")
    yield client
    server.stop()


def test_s3_manifest_and_decode(ray_session, tree, tmp_path, s3_server):
    root, bad = tree
    for name in ("jump", "run"):
        for i in range(2):
            s3_server.upload_file(str(root / name / f"{name}_{i}.mp4"), "videos", f"ucf/{name}/{name}_{i}.mp4")
    s3_server.upload_file(str(bad["text"]), "videos", "ucf/run/notes.mp4")

    summary = m.prepare(sources.FolderSource("s3://videos/ucf"), "s3://videos/prepared", val_fraction=0.5, **PROBE)
    assert summary.accepted == 4 and summary.rejected == {"not_a_video": 1}
    listed = {o["Key"] for o in s3_server.list_objects_v2(Bucket="videos", Prefix="prepared/")["Contents"]
              if not o["Key"].endswith("/")}  # pyarrow's create_dir leaves a "prepared/" marker object
    assert listed == {f"prepared/{f}" for f in ("manifest.parquet", "labels.json", "quarantine.parquet",
                                                "summary.json")}
    table = m.read_manifest("s3://videos/prepared")
    assert sorted(table.column("path").to_pylist()) == sorted(
        f"s3://videos/ucf/{n}/{n}_{i}.mp4" for n in ("jump", "run") for i in range(2))
    assert set(table.column("num_frames").to_pylist()) == {FRAMES}
    assert m.read_labels("s3://videos/prepared") == ["jump", "run"]

    # Decode a clip from S3 in the Ray Data pipeline (the decode actors read the bytes through pyarrow).
    from pipeline.config import Config
    from pipeline.data.pipeline import build_eval_dataset
    from pipeline.data.run_state import create_run_state

    cfg = Config().replace({"model.num_segments": 4, "data.short_side": 32, "data.crop_size": 32,
                            "data.decode_workers": 1, "data.decode_timeout_s": 60.0})
    rows = build_eval_dataset(cfg, "s3://videos/prepared", "val", run_state=create_run_state()).take_all()
    val = m.read_manifest("s3://videos/prepared", split="val").to_pylist()
    assert [r["video_id"] for r in rows] == [r["video_id"] for r in val]
    for row, meta in zip(rows, val):
        assert row["clip"].shape == (4, 32, 32, 3)
        expected = _frames(CLASSES.index(meta["label_name"]), int(Path(meta["path"]).stem.split("_")[-1]))[0, 0, 0, 0]
        assert abs(float(row["clip"][..., 0].mean()) - float(expected)) < 3


def test_real_world_inputs_rotation_av1_streams_static_and_unreadable(ray_session, tmp_path):
    """Issue 13: every candidate ends in the manifest or the quarantine, with display sizes and the decode backend
    the probe chose; frame shards (a Ray job on the manifest) hold upright frames with the display aspect."""
    from pipeline.data.encode import available_codecs
    from pipeline.data.shard_writer import write_shards
    from pipeline.data.shards import ShardReader, read_shard_manifest
    from tests.videos import (frame_number, make_unreadable, marked_frames, marker_corner, write_rotated_video,
                              write_static_video, write_two_streams)

    root = tmp_path / "videos"
    write_rotated_video(root / "phone" / "portrait90.mp4", rotation=90, width=48, height=96)
    write_rotated_video(root / "phone" / "portrait270.mp4", rotation=270, width=48, height=64)
    write_rotated_video(root / "phone" / "upside180.mp4", rotation=180, width=96, height=48)
    write_two_streams(root / "screen" / "two_streams.mp4")
    write_static_video(root / "screen" / "slide.mp4", num_frames=24)
    av1 = "libsvtav1" in available_codecs()
    if av1:  # else the AV1 case is covered by no file here (and skipped in test_decode with its reason)
        write_video(root / "screen" / "youtube_av1.mp4", marked_frames(8, 64, 48), 8, codec="libsvtav1")
    (root / "screen" / "deleted_clip.mp4").symlink_to(root / "screen" / "nowhere.mp4")
    make_unreadable(root / "screen" / "locked.mp4")

    summary = m.prepare(sources.FolderSource(root), tmp_path / "out", val_fraction=0.0, **PROBE)
    rows = {Path(r["path"]).name: r for r in m.read_manifest(tmp_path / "out").to_pylist()}
    expected = {  # name: (width, height, num_frames, codec, backend), display sizes
        "portrait90.mp4": (48, 96, 8, "h264", "decord"),
        "portrait270.mp4": (48, 64, 8, "h264", "decord"),
        "upside180.mp4": (96, 48, 8, "h264", "decord"),
        "slide.mp4": (64, 48, 24, "h264", "decord"),
        **({"youtube_av1.mp4": (64, 48, 8, "av1", "pyav")} if av1 else {}),
    }
    for name, facts in expected.items():
        r = rows[name]
        assert (r["width"], r["height"], r["num_frames"], r["codec"], r["backend"]) == facts, name
    two = rows["two_streams.mp4"]  # the stream decord decodes (its FFmpeg picks the 128x96 one)
    assert (two["width"], two["height"], two["num_frames"], two["backend"]) in ((128, 96, 8, "decord"),
                                                                                  (64, 48, 8, "decord"))
    quarantine = {Path(q["path"]).name: q for q in pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()}
    assert {k: q["reason"] for k, q in quarantine.items()} == {"deleted_clip.mp4": "missing",
                                                               "locked.mp4": "unreadable"}
    assert "dangling symbolic link" in quarantine["deleted_clip.mp4"]["detail"]
    # Every candidate is accounted for.
    assert summary.candidates == len(expected) + 1 + 2
    assert summary.accepted + sum(summary.rejected.values()) == summary.candidates
    assert summary.backends == {"decord": len(expected) + 1 - av1, **({"pyav": 1} if av1 else {})}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["candidates"] == summary.candidates

    # Frame shards decode through the same functions: upright, display aspect, the right frames.
    shards = write_shards(tmp_path / "out", tmp_path / "shards", short_side=32, videos_per_task=8)
    assert shards.failed == 0
    reader = ShardReader()
    for row in read_shard_manifest(tmp_path / "shards").to_pylist():
        name = Path(row["source_path"]).name
        if name not in expected:
            continue
        width, height = expected[name][:2]
        got = reader.decode(row["path"], row["batch_index"], np.array([0, 5]), video_id=row["video_id"])
        short = 32
        assert got.shape[1:3] == ((short, round(width * short / height)) if height <= width
                                  else (round(height * short / width), short)), name
        assert [marker_corner(f) for f in got] == ["top-left"] * 2, name
        if name != "slide.mp4":
            assert [frame_number(f) for f in got] == [0, 5], name
