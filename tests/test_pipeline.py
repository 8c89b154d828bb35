"""The Ray Data pipeline on the session's Ray instance, with real H.264 videos whose pixels carry their truth.

Video of class c, frame f: every pixel is RGB (40 + 60c, 20 + 8f, 128). A decoded clip therefore tells its label
(red) and which frames were sampled (green), through decoding, resizing, cropping and flipping. The manifests are
written directly (MANIFEST_SCHEMA) so these tests do not pay for probing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from pipeline.config import Config
from pipeline.data import sampling
from pipeline.data.encode import write_video
from pipeline.data.manifest import MANIFEST_SCHEMA
from pipeline.data.isolation import CHILD_PROCESS_NAME
from pipeline.data.pipeline import build_eval_dataset, build_train_dataset, clip_dataset, split_rows
from pipeline.data.run_state import create_run_state
from tests.faults import faulty_decode
from tests.processes import descendants_named

NUM_FRAMES, FPS, WIDTH, HEIGHT = 24, 8, 64, 48
T = 4
NAMES = ("red", "orange", "yellow")


def _video(label: int) -> np.ndarray:
    frames = np.empty((NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 0] = 40 + 60 * label
    frames[..., 1] = (20 + 8 * np.arange(NUM_FRAMES))[:, None, None]
    frames[..., 2] = 128
    return frames


def _read_clip(clip: np.ndarray) -> tuple[int, list[int]]:
    """(label, sampled frame indices) from a decoded clip (T, H, W, 3)."""
    clip = np.asarray(clip, dtype=np.float64)
    label = int(round((clip[..., 0].mean() - 40) / 60))
    frames = [int(round((clip[t, ..., 1].mean() - 20) / 8)) for t in range(len(clip))]
    return label, frames


def _cfg(**data) -> Config:
    overrides = {"model.num_segments": T, "data.short_side": 32, "data.crop_size": 32, "data.decode_workers": 2,
                 "data.decode_batch_size": 2, "data.decode_timeout_s": 30.0, "train.seed": 5}
    overrides.update({f"data.{k}": v for k, v in data.items()})
    return Config().replace(overrides)


def _manifest(path, rows) -> str:
    """rows: (video_id, video path, label, split) -> a manifest Parquet file."""
    table = pa.Table.from_pylist([
        {"video_id": vid, "path": str(p), "label": label, "label_name": NAMES[label], "split": split,
         "num_frames": NUM_FRAMES, "fps": float(FPS), "width": WIDTH, "height": HEIGHT,
         "duration": NUM_FRAMES / FPS, "codec": "h264", "size_bytes": 1} for vid, p, label, split in rows],
        schema=MANIFEST_SCHEMA)
    pq.write_table(table, path)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_videos")
    out = {}
    for label in range(len(NAMES)):
        for i in range(3):
            out[(label, i)] = write_video(root / f"{NAMES[label]}_{i}.mp4", _video(label), FPS)
    return root, out


def test_decode_processes_outlive_epochs_and_each_epoch_has_its_own_order(ray_session, videos, tmp_path):
    """The second and third passes (epochs 1, 2) decode with the child processes of the first: no per-epoch
    start-up. Each pass visits every video once, in the order sampling.epoch_order gives its epoch."""
    _, files = videos
    rows = [(f"{NAMES[c]}/{i}", p, c, "train") for (c, i), p in files.items()]
    manifest = _manifest(tmp_path / "manifest.parquet", rows)
    state = create_run_state()
    orders, children = [], []
    for epoch in range(3):
        # A dataset per epoch; one decode task at a time: rows leave in the order of the source's blocks.
        ds = build_train_dataset(_cfg(decode_workers=1), manifest, epoch=epoch, run_state=state)
        got = [(vid, _read_clip(clip)[1]) for batch in ds.iter_batches(batch_size=None)
               for vid, clip in zip(batch["video_id"], batch["clip"])]
        assert all(frames == sampling.train_indices(NUM_FRAMES, T, sampling.clip_rng(5, epoch, vid)).tolist()
                   for vid, frames in got)
        orders.append([vid for vid, _ in got])
        children.append(descendants_named(CHILD_PROCESS_NAME))
    ids = [vid for vid, *_ in rows]
    for epoch, order in enumerate(orders):
        assert order == [ids[i] for i in sampling.epoch_order(len(ids), 5, epoch)]
    assert len(set(map(tuple, orders))) == 3
    assert children[0] and children[1] == children[0] and children[2] == children[0]


def test_a_dataset_decodes_exactly_the_rows_it_is_given(ray_session, videos, tmp_path):
    """What max_steps and a resumed epoch rely on: a rank's pass decodes its planned rows and no others."""
    _, files = videos
    rows = [(f"{NAMES[c]}/{i}", p, c, "train") for (c, i), p in files.items()]
    table = split_rows(_manifest(tmp_path / "manifest.parquet", rows), "train")
    assert table.column("video_id").to_pylist() == [vid for vid, *_ in rows]  # manifest order
    plan = sampling.epoch_rows(table.num_rows, 5, 4, rank=1, world=2, limit=3)
    state = create_run_state()
    got = clip_dataset(_cfg(decode_workers=1), table.take(plan), train=True, epoch=4, run_state=state).take_all()
    assert [r["video_id"] for r in got] == [rows[i][0] for i in plan]
    for r in got:
        assert _read_clip(r["clip"])[1] == sampling.train_indices(
            NUM_FRAMES, T, sampling.clip_rng(5, 4, r["video_id"])).tolist()
    assert ray.get(state.failure_count.remote()) == 0


def test_two_consumers_get_disjoint_complete_labelled_shards_with_fresh_offsets(ray_session, videos, tmp_path):
    _, files = videos
    rows = [(f"{NAMES[c]}/{i}", p, c, "train") for (c, i), p in files.items()]
    manifest = _manifest(tmp_path / "manifest.parquet", rows)
    cfg = _cfg().replace({"train.batch_size": 3})
    state = create_run_state()
    table = split_rows(manifest, "train")

    # What a trainer rank does, with the trainer's own data object (the ranks one after the other here; the Ray
    # Train tests run them side by side).
    def consume(table, rank: int, epochs: int, state):
        import torch

        from pipeline.training.data import RankData
        from pipeline.training.elastic import EpochPosition

        data = RankData(cfg, table, table, rank=rank, world=2, run_state=state)
        seen = []
        for epoch in range(epochs):
            position = EpochPosition.start(epoch, data.num_train_rows)
            stream, truncated = data.train_stream(position, limit=None)
            assert not truncated
            for batch in stream:
                assert batch["clip"].dtype == torch.uint8 and batch["label"].dtype == torch.int64
                # The rows the stream recorded for this batch, i.e. the data position it advanced by.
                ids = [table.column("video_id")[i].as_py() for i in position.pending[-len(batch["label"]):]]
                for clip, label, vid, k in zip(batch["clip"].numpy(), batch["label"].tolist(), ids,
                                               batch["clip_index"].tolist()):
                    seen.append((epoch, vid, label, k, clip))
        return seen

    got = [consume(table, rank, 2, state) for rank in range(2)]
    for rank_rows in got:
        assert all(r[4].shape == (T, 32, 32, 3) for r in rank_rows)
    got = [[(*r[:4], *_read_clip(r[4])) for r in rank_rows] for rank_rows in got]
    labels = {vid: c for vid, _, c, _ in rows}
    for epoch in range(2):
        per_rank = [[r for r in g if r[0] == epoch] for g in got]
        ids = [[r[1] for r in rank_rows] for rank_rows in per_rank]
        # Disjoint, equal and complete but for the equal split's remainder: 9 videos, 4 per rank, and the last
        # of the epoch's order waits for the next epoch.
        order = [rows[i][0] for i in sampling.epoch_order(len(rows), 5, epoch)]
        assert sorted(ids[0] + ids[1]) == sorted(order[:-1])
        assert not set(ids[0]) & set(ids[1]) and len(ids[0]) == len(ids[1]) == 4
        for _, vid, label, k, pixel_label, frames in per_rank[0] + per_rank[1]:
            assert label == labels[vid] == pixel_label
            assert k == 0
            expected = sampling.train_indices(NUM_FRAMES, T, sampling.clip_rng(5, epoch, vid)).tolist()
            assert frames == expected, (epoch, vid)
    offsets = {(r[0], r[1]): r[5] for g in got for r in g}
    assert any(offsets[(0, vid)] != offsets[(1, vid)] for vid in labels)
    assert ray.get(state.failure_count.remote()) == 0


def test_eval_rows_follow_manifest_order_with_clips_and_crops(ray_session, videos, tmp_path):
    _, files = videos
    # Manifest order (not sorted by id) is the evaluation order.
    rows = [(f"v{n}", files[key], key[0], "val") for n, key in enumerate([(2, 0), (0, 1), (1, 2), (0, 0)])]
    manifest = _manifest(tmp_path / "manifest.parquet", rows + [("t", files[(1, 0)], 1, "train")])
    # Two decode tasks at a time, batches of one video: they finish out of order, the rows must not.
    ds = build_eval_dataset(_cfg(decode_batch_size=1), manifest, "val", num_clips=2, crops=3,
                            run_state=create_run_state())
    first = ds.take_all()
    order = [(r["video_id"], r["clip_index"]) for r in first]
    assert order == [(vid, k) for vid, *_ in rows for k in range(6)]
    for r in first:
        label, frames = _read_clip(r["clip"])
        assert label == r["label"] == dict((vid, c) for vid, _, c, _ in rows)[r["video_id"]]
        assert frames == sampling.eval_indices(NUM_FRAMES, T, clip=r["clip_index"] // 3, num_clips=2).tolist()
        assert r["clip"].shape == (T, 32, 32, 3) and r["clip"].dtype == np.uint8


def test_hanging_crashing_and_bad_files_are_dropped_and_recorded(ray_session, videos, tmp_path):
    """Also runs the shuffle_frames control (one Ray Data execution less on slow CI machines)."""
    root, files = videos
    good = [(f"{NAMES[c]}/{i}", p, c, "train") for (c, i), p in files.items() if i < 2]
    # tests/faults.py: the decode process hangs on files named *HANG*, segfaults on *CRASH*.
    (tmp_path / "HANG.mp4").write_bytes(files[(0, 2)].read_bytes())
    (tmp_path / "CRASH.mp4").write_bytes(files[(1, 2)].read_bytes())
    data = files[(2, 2)].read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    bad = [("hang", tmp_path / "HANG.mp4", 0, "train"), ("crash", tmp_path / "CRASH.mp4", 1, "train"),
           ("gone", tmp_path / "deleted.mp4", 2, "train"), ("cut", tmp_path / "truncated.mp4", 2, "train")]
    manifest = _manifest(tmp_path / "manifest.parquet", good + bad)
    state = create_run_state()
    # A generous timeout: the first call of a fresh decode process imports numpy/torch, slow on a loaded machine.
    cfg = _cfg(decode_timeout_s=10.0, decode_workers=1, shuffle_frames=True)
    got = build_train_dataset(cfg, manifest, epoch=3, run_state=state, decode_fn=faulty_decode).take_all()
    # Every good video arrived, intact: its label, and (shuffle_frames) its sampled frames in a shuffled order.
    assert sorted(r["video_id"] for r in got) == sorted(vid for vid, *_ in good)
    for r in got:
        label, frames = _read_clip(r["clip"])
        assert label == r["label"]
        expected = sampling.train_indices(NUM_FRAMES, T, sampling.clip_rng(5, 3, r["video_id"])).tolist()
        assert sorted(frames) == expected
    assert any(_read_clip(r["clip"])[1] != sorted(_read_clip(r["clip"])[1]) for r in got)
    failures = {f["video_id"]: f for f in ray.get(state.failures.remote())}
    assert set(failures) == {"hang", "crash", "gone", "cut"}
    assert failures["hang"]["reason"] == "timeout"
    assert failures["crash"]["reason"] == "crashed"
    assert failures["gone"]["reason"] == "missing"
    assert failures["cut"]["reason"] in ("truncated", "decode_error")
    assert {f["epoch"] for f in failures.values()} == {3}
    assert failures["hang"]["path"] == str(tmp_path / "HANG.mp4")
    assert ray.get(state.failure_count.remote(epoch=3)) == 4
    assert ray.get(state.failure_count.remote(epoch=0)) == 0


def test_run_state_and_validation(ray_session, tmp_path):
    named = create_run_state("eco-test-state")
    ray.get(named.record_failures.remote([{"path": "a", "reason": "timeout", "detail": "", "epoch": 7}]))
    assert ray.get(named.failures.remote(epoch=7))[0]["path"] == "a"
    assert ray.get(named.failures.remote(epoch=6)) == []
    assert ray.get(named.failure_count.remote()) == 1
    assert ray.get(create_run_state("eco-test-state").failure_count.remote()) == 1  # the same actor by name
    ray.kill(named)
    pq.write_table(pa.Table.from_pylist([], schema=MANIFEST_SCHEMA), tmp_path / "manifest.parquet")
    with pytest.raises(ValueError, match=r"manifest\.parquet: no rows with split 'val'"):
        build_eval_dataset(_cfg(), tmp_path, "val", run_state=create_run_state())
    pq.write_table(pa.table({"video_id": ["a"], "path": ["a.mp4"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: missing manifest column\(s\) label"):
        build_train_dataset(_cfg(), tmp_path / "bad.parquet", run_state=create_run_state())
    with pytest.raises(ValueError, match="crops must be 1 or 3"):
        build_eval_dataset(_cfg(), tmp_path, "val", crops=2)
