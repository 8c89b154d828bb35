"""`data.decode_on=device`: the decode workers ship JPEG bytes + draws, the trainer decodes and augments them.

Real H.264 videos (tests/videos.py) -> shards written by the project's Ray writer -> both paths, clip by clip.
Tolerance: none on CPU. Both paths decode with the same libjpeg-turbo (torchvision), stack the frames into the
same (T, H, W, 3) layout and crop/resize them with the same uint8 functions, from the same draws, so the clips are
equal byte for byte. (On CUDA nvJPEG's IDCT/upsampling and the float resize round differently: `eco check gpu`
measures that difference on a GPU.)
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data.clips import ShardClipDecoder, ShardJpegDecoder
from pipeline.data.jpeg_clips import ClipFinish, decode_clips, pack
from pipeline.data.manifest import MANIFEST_SCHEMA
from pipeline.data.shard_writer import write_shards
from pipeline.data.shards import read_shard_manifest
from tests.videos import write_test_video

SHORT, CROP, SEGMENTS = 48, 40, 8


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory):
    """Four videos (landscape and portrait, different lengths) written as Arrow shards by `write_shards`."""
    from pipeline.data.decode import probe

    root = tmp_path_factory.mktemp("jpeg_clip_videos")
    rows = []
    for vid, n, w, h, label in [("a", 40, 96, 64, 0), ("b", 24, 80, 64, 1), ("c", 33, 64, 96, 1),
                                ("d", 6, 64, 64, 0)]:  # d: fewer frames than segments (repeated indices)
        path = write_test_video(root / f"{vid}.mp4", num_frames=n, width=w, height=h, fps=12, gop=8)
        info = probe(str(path))
        rows.append({"video_id": vid, "path": str(path), "label": label, "label_name": ["x", "y"][label],
                     "split": "train", "num_frames": info.num_frames, "fps": info.fps, "width": info.width,
                     "height": info.height, "duration": info.num_frames / info.fps, "codec": "h264",
                     "size_bytes": path.stat().st_size})
    manifest = root / "prepared"
    manifest.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest / "manifest.parquet")
    (manifest / "labels.json").write_text(json.dumps(["x", "y"]))
    out = tmp_path_factory.mktemp("jpeg_clip_shards")
    write_shards(manifest, out, short_side=SHORT, quality=90, videos_per_task=4)
    return out


def _batch(out, epoch: int) -> dict[str, np.ndarray]:
    table = read_shard_manifest(str(out)).sort_by("video_id")
    batch = {k: table.column(k).to_numpy(zero_copy_only=False)
             for k in ("path", "video_id", "label", "num_frames", "batch_index")}
    batch["epoch"] = np.full(table.num_rows, epoch, np.int64)
    return batch


@pytest.mark.parametrize("settings", [
    dict(train=True, multiscale=True, flip=True, shuffle_frames=False),
    dict(train=True, multiscale=True, flip=True, shuffle_frames=True),
    dict(train=False, multiscale=False, flip=False, shuffle_frames=False, num_clips=2, crops=3),
    dict(train=False, multiscale=False, flip=False, shuffle_frames=True, num_clips=1, crops=1),
])
def test_device_path_equals_cpu_path_clip_by_clip(shards, settings):
    kwargs = dict(num_segments=SEGMENTS, short_side=SHORT, crop_size=CROP, seed=7, **settings)
    finish = ClipFinish(train=settings["train"], crop_size=CROP, short_side=SHORT, crops=settings.get("crops", 1))
    cpu_dec, jpeg_dec = ShardClipDecoder(**kwargs), ShardJpegDecoder(**kwargs)
    draws = []
    for epoch in range(6 if settings["train"] else 1):
        batch = _batch(shards, epoch)
        (want, want_failed), (got, got_failed) = cpu_dec(batch), jpeg_dec(batch)
        assert want_failed == got_failed == []
        for column in ("video_id", "label", "clip_index"):
            assert list(got[column]) == list(want[column]), column
        assert "clip" not in got and got["jpeg"].dtype == object
        assert got["jpeg_offsets"].shape == (len(want["label"]), SEGMENTS + 1)
        clips = decode_clips(got, finish, device="cpu")
        assert clips.dtype == torch.uint8 and tuple(clips.shape) == want["clip"].shape
        for i, vid in enumerate(want["video_id"]):
            assert np.array_equal(clips[i].numpy(), want["clip"][i]), (vid, epoch, int(want["clip_index"][i]))
        draws.extend(map(tuple, got["augment"]))
    if settings["train"]:
        # The test means something: the epochs drew several crop scales and positions and both flips.
        scales, positions, flips = ({d[0] for d in draws}, {(d[1], d[2]) for d in draws}, {d[3] for d in draws})
        assert len(scales) >= 3 and len(positions) >= 3 and flips == {0.0, 1.0}, draws
    else:
        assert not np.any(got["augment"])


def test_pack_offsets_and_a_bad_frame_names_the_videos():
    blob, offsets = pack([b"ab", memoryview(b"cde"), b""])
    assert blob == b"abcde" and offsets.tolist() == [0, 2, 5, 5]
    batch = {"jpeg": np.asarray([b"not a jpeg"], dtype=object), "jpeg_offsets": np.asarray([[0, 10]]),
             "augment": np.zeros((1, 4)), "video_id": np.asarray(["broken"], dtype=object)}
    with pytest.raises(ValueError, match="broken"):
        decode_clips(batch, ClipFinish(train=True, crop_size=32, short_side=32), device="cpu")


def test_eval_dataset_in_device_mode_ships_jpegs_that_become_the_cpu_modes_views(shards):
    """Through Ray Data: 3-crop evaluation datasets of both modes, the device mode's rows (JPEG bytes, no pixels)
    finished by the collate, equal view by view. (Training through Ray Train: tests/test_train_shards_device.py.)"""
    from pipeline.config import Config
    from pipeline.data.pipeline import ClipCollate, build_eval_dataset, clip_finish
    from pipeline.data.run_state import create_run_state

    base = Config().replace([f"data.manifest={shards}", "data.format=shards", f"data.short_side={SHORT}",
                             f"data.crop_size={CROP}", "data.decode_workers=1", "data.decode_cpus=0.5",
                             "data.decode_batch_size=2", f"model.num_segments={SEGMENTS}"])
    device_cfg = base.replace({"data.decode_on": "device"})
    state = create_run_state()

    def views(cfg):
        ds = build_eval_dataset(cfg, str(shards), "train", crops=3, run_state=state)
        collate = ClipCollate(keep_video_id=True, finish=clip_finish(cfg, train=False, crops=3), device="cpu")
        got = {}
        for b in ds.iter_torch_batches(batch_size=5, collate_fn=collate):
            got.update({(vid, view): clip for vid, view, clip in zip(b["video_id"], b["clip_index"].tolist(),
                                                                      b["clip"])})
        return ds.schema().names, got

    cpu_columns, want = views(base)
    device_columns, got = views(device_cfg)
    assert {"jpeg", "jpeg_offsets", "augment"} <= set(device_columns) and "clip" not in device_columns
    assert "clip" in cpu_columns
    assert sorted(got) == sorted(want) == [(v, k) for v in "abcd" for k in range(3)]
    for key, clip in want.items():
        assert got[key].shape == (SEGMENTS, CROP, CROP, 3) and torch.equal(got[key], clip), key


def test_device_mode_needs_shards():
    from pipeline.config import Config, ConfigError

    with pytest.raises(ConfigError, match="data.decode_on.*data.format=shards"):
        Config().replace({"data.decode_on": "device"})
    with pytest.raises(ConfigError, match="data.decode_on: expected one of 'cpu', 'device'"):
        Config().replace({"data.format": "shards", "data.decode_on": "gpu"})


def test_the_trainer_side_and_its_gpu_check_run_without_ray():
    """GPU machines have torch, torchvision and numpy but no Ray: the device decode and the gpu-check code around
    it import none of Ray, decord or wandb (a fresh interpreter, which decodes a batch to prove it)."""
    import subprocess
    import sys

    code = """
import sys
from pipeline.bench.check_gpu import CheckSettings, jpeg_batches
from pipeline.data.jpeg_clips import ClipFinish, decode_clips
from pipeline.training import engine, optim  # what measure_device_decode uses
s = CheckSettings.tiny()
clips = decode_clips(jpeg_batches(s)[0], ClipFinish(train=True, crop_size=s.size, short_side=73))
assert tuple(clips.shape) == (s.batch, s.segments, s.size, s.size, 3), clips.shape
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'decord', 'wandb'))
print('heavy:', heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "heavy: []" in done.stdout, done.stdout
