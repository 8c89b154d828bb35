"""The shard stage with and without decoding on the trainer's device: clips per worker CPU-second, same run.

`measure(work_dir)` writes Kinetics-like MP4s (340x256, 10 s, 30 fps, H.264, GOP 250; the videos of `eco bench
shards`), converts them into Arrow IPC frame shards (short side 256, every frame, JPEG q90), and times, in this
one process with one thread, the real row decoders of the decode stage on decode batches of 4 rows of 16-segment
TSN training clips (multi-scale crop + flip to 224):

    decode on cpu     ShardClipDecoder: sample, read 16 JPEGs, decode, crop + resize + flip, stack uint8 clips
    decode on device  ShardJpegDecoder: sample + draws, read the 16 JPEGs' bytes, pack them (no decode)

(the baseline and the new mode measured on the same batches in the same run), then the trainer's side of the
device mode on the CPU: `jpeg_clips.decode_clips` on batches of 16 of those clips (one batched decode_jpeg, crop +
resize + flip). Every figure is process CPU seconds (time.process_time), not wall time: the machine may be shared.

Then the whole Ray Data stage in both modes (`pipeline.data.pipeline.clip_dataset` on the same shards, 2 decode
tasks of 1 CPU, decode batches of 4, consumed by this driver): clips per CPU-second of the decode worker processes
(read from /proc, as `eco bench pipeline` does), which adds Ray's per-block costs (Arrow conversion of the batch,
object store, task scheduling) to the decoders' own.

`eco bench device_decode [--quick] [--out DIR]`; exit status 1 when a full run misses TARGET_RATIO in the Ray stage.
The in-process part needs torch, torchvision, numpy and pyarrow only; Ray only for the stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench._common import CpuTimer, Timing, write_results

log = logging.getLogger(__name__)

TARGET_RATIO = 5.0  # the worker's cost per clip should fall to a fifth or less
SEGMENTS, SHORT_SIDE, CROP = 16, 256, 224
ROWS_PER_BATCH = 4  # data.decode_batch_size's default
TRAINER_BATCH = 16
ON_CPU = "decode on cpu (ShardClipDecoder)"
ON_DEVICE = "decode on device (ShardJpegDecoder)"


def _batches(rows: list[dict[str, Any]], clips: int) -> list[dict[str, np.ndarray]]:
    """Decode batches of ROWS_PER_BATCH manifest rows, `clips` rows in all, cycling over the videos with a new
    epoch (new TSN offsets and draws) each round."""
    out = []
    for start in range(0, clips, ROWS_PER_BATCH):
        picked = [(rows[i % len(rows)], i // len(rows)) for i in range(start, min(start + ROWS_PER_BATCH, clips))]
        out.append({
            "path": np.asarray([r["path"] for r, _ in picked], dtype=object),
            "video_id": np.asarray([r["video_id"] for r, _ in picked], dtype=object),
            "label": np.asarray([r["label"] for r, _ in picked], np.int64),
            "num_frames": np.asarray([r["num_frames"] for r, _ in picked], np.int64),
            "batch_index": np.asarray([r["batch_index"] for r, _ in picked], np.int64),
            "epoch": np.asarray([e for _, e in picked], np.int64),
        })
    return out


def _time_stage(name: str, decoder, batches: list[dict[str, np.ndarray]]) -> tuple[Timing, list[dict]]:
    decoder(batches[0])  # warm-up: open the shard files, page cache, first-call allocations; not counted
    outputs = []
    with CpuTimer() as t:
        for batch in batches:
            out, failures = decoder(batch)
            if failures:
                raise RuntimeError(f"{name}: {failures}")
            outputs.append(out)
    clips = sum(len(o["label"]) for o in outputs)
    timing = Timing(clips, t.wall_s, t.cpu_s)
    log.info("%s: %d clips in %.2f CPU-s: %.1f clips/s/core", name, clips, t.cpu_s, timing.clips_per_cpu_s)
    return timing, outputs


def _trainer_batches(outputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in ("jpeg", "jpeg_offsets", "augment", "label",
                                                                      "clip_index")}
    n = len(merged["label"])
    return [{k: v[i:i + TRAINER_BATCH] for k, v in merged.items()} for i in range(0, n, TRAINER_BATCH)]


def _ray_stage(shard_dir: Path, clips: int, decode_on: str, rows_per_batch: int) -> dict[str, Any]:
    """Clips per decode-worker CPU-second of the Ray Data stage reading `shard_dir` with data.decode_on and
    data.decode_batch_size=rows_per_batch."""
    import ray

    from pipeline.bench.pipeline import _config, _consume, _manifest_table
    from pipeline.data.pipeline import clip_dataset
    from pipeline.data.run_state import create_run_state

    videos = _manifest_table(shard_dir, copies=1, rename=False).num_rows
    # Rows repeat (the shard reader checks each row's video id, so copies keep theirs): clip_dataset takes rows
    # as given, one clip each.
    table = _manifest_table(shard_dir, copies=-(-clips // videos), rename=False).slice(0, clips)
    cfg = _config(2).replace({"data.format": "shards", "data.decode_on": decode_on,
                              "data.decode_batch_size": rows_per_batch})
    state = create_run_state()
    _consume(clip_dataset(cfg, table.slice(0, 16), train=True, run_state=state), [0])  # warm-up: worker processes
    n, steady_s, first, cpu_s = _consume(clip_dataset(cfg, table, train=True, epoch=1, run_state=state), [0])
    failed = ray.get(state.failures.remote())
    ray.kill(state)
    if n != clips:
        raise RuntimeError(f"the {decode_on} stage returned {n} of {clips} clips: {failed[:3]}")
    return {"decode_on": decode_on, "rows_per_batch": rows_per_batch, "clips": n, "decode_cpu_s": cpu_s, "clips_per_cpu_s": (n - first) / cpu_s if cpu_s > 0 else float("nan"),
            "ms_per_clip": 1000 * cpu_s / max(n - first, 1), "load_average": os.getloadavg()[0]}


def measure(work_dir: str | Path | None = None, *, quick: bool = False, clips: int | None = None,
            videos: int | None = None, ray_stage: bool = True) -> dict[str, Any]:
    import torch

    from pipeline.bench.shards import _cpu_name, _write_in_process, source_videos
    from pipeline.data.clips import ShardClipDecoder, ShardJpegDecoder
    from pipeline.data.jpeg_clips import ClipFinish, decode_clips

    torch.set_num_threads(1)  # per-core figures
    work = Path(work_dir or tempfile.mkdtemp(prefix="eco-bench-device-decode-"))
    manifest_dir, video_rows, n_clips, setup = source_videos(work, quick=quick, clips=clips, videos=videos)
    written = _write_in_process(manifest_dir, work / "shards_arrow", fmt="arrow", fps=None, quality=90)
    batches = _batches(written["rows"], n_clips)
    kwargs = dict(train=True, num_segments=SEGMENTS, short_side=SHORT_SIDE, crop_size=CROP, multiscale=True,
                  flip=True, shuffle_frames=False, seed=0)
    cpu, _ = _time_stage("decode on cpu", ShardClipDecoder(**kwargs), batches)
    device, outputs = _time_stage("decode on device", ShardJpegDecoder(**kwargs), batches)

    finish = ClipFinish(train=True, crop_size=CROP, short_side=SHORT_SIDE)
    trainer_batches = _trainer_batches(outputs)
    decode_clips(trainer_batches[0], finish, device="cpu")  # warm-up
    with CpuTimer() as t:
        for b in trainer_batches:
            out = decode_clips(b, finish, device="cpu")
            assert tuple(out.shape) == (len(b["label"]), SEGMENTS, CROP, CROP, 3), out.shape
    trainer = Timing(sum(len(b["label"]) for b in trainer_batches), t.wall_s, t.cpu_s)
    jpeg_bytes = float(np.mean([len(blob) for o in outputs for blob in o["jpeg"]]))
    ratio = device.clips_per_cpu_s / cpu.clips_per_cpu_s
    stage: dict[str, Any] = {}
    if ray_stage:
        import ray

        from pipeline import raystart

        started = not ray.is_initialized()
        if started:
            # 2 logical CPUs for the decode tasks plus 1 spare for Ray Data's own small tasks (eco bench pipeline).
            raystart.ensure_ray(num_cpus=3, object_store_memory=512 * 2**20)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            # The same decode batches as the CPU mode, then 4x larger ones: a device-mode clip costs the worker so
            # little that Ray's fixed cost per block (a task's output, an object-store put) is most of it.
            stage = {name: _ray_stage(work / "shards_arrow", max(64, n_clips), mode, rows)
                     for name, mode, rows in (("cpu", "cpu", ROWS_PER_BATCH), ("device", "device", ROWS_PER_BATCH),
                                              ("device, 4x rows per batch", "device", 4 * ROWS_PER_BATCH))}
        finally:
            if started:
                ray.shutdown()
    return {
        "setup": {**setup, "segments": SEGMENTS, "short_side": SHORT_SIDE, "crop": CROP, "jpeg_quality": 90, "threads": 1,
                  "rows_per_batch": ROWS_PER_BATCH, "trainer_batch": TRAINER_BATCH, "cpu": _cpu_name()},
        "worker": {name: {"clips": tm.clips, "cpu_s": tm.cpu_s, "wall_s": tm.wall_s,
                          "clips_per_cpu_s": tm.clips_per_cpu_s, "ms_per_clip": 1000 * tm.cpu_s / tm.clips}
                   for name, tm in ((ON_CPU, cpu), (ON_DEVICE, device))},
        "worker_ratio": ratio,
        "ray_stage": stage,
        "ray_stage_ratio": (stage["device"]["clips_per_cpu_s"] / stage["cpu"]["clips_per_cpu_s"]) if stage else None,
        "load_average": os.getloadavg(),
        "target_ratio": TARGET_RATIO,
        "trainer_cpu": {"clips": trainer.clips, "cpu_s": trainer.cpu_s, "clips_per_cpu_s": trainer.clips_per_cpu_s,
                        "ms_per_clip": 1000 * trainer.cpu_s / trainer.clips},
        # What crosses the object store per clip in each mode.
        "bytes_per_clip": {"cpu": SEGMENTS * CROP * CROP * 3, "device": jpeg_bytes},
    }


def format_results(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [f"shard stage, 16-segment training clips (multi-scale crop + flip to {CROP}), decode batches of "
             f"{s['rows_per_batch']} rows, one thread, {s['videos']} videos of {s['seconds']:g} s {s['size']} "
             f"(Arrow IPC shards, short side {SHORT_SIDE}, JPEG q{s['jpeg_quality']}); process CPU time",
             f"  {'decode worker':40s} {'clips/s/core':>13s} {'ms/clip':>8s} {'x cpu mode':>11s}"]
    base = res["worker"][ON_CPU]["clips_per_cpu_s"]
    for name, w in res["worker"].items():
        lines.append(f"  {name:40s} {w['clips_per_cpu_s']:13.1f} {w['ms_per_clip']:8.2f} "
                     f"{w['clips_per_cpu_s'] / base:11.1f}")
    ok = res["worker_ratio"] >= res["target_ratio"]
    lines.append(f"  worker clips per CPU-second, device mode / cpu mode: {res['worker_ratio']:.1f}x "
                 f"(target >= {res['target_ratio']:g}x: {'met' if ok else 'NOT MET'})")
    if res["ray_stage"]:
        st = res["ray_stage"]
        lines.append(f"  the Ray Data stage (clip_dataset, 2 decode tasks, worker processes' CPU time from /proc):")
        base = st["cpu"]["clips_per_cpu_s"]
        for r in st.values():
            lines.append(f"    decode_on={r['decode_on']:6s} decode_batch_size={r['rows_per_batch']:2d}: {r['clips']:5d} "
                         f"clips, {r['clips_per_cpu_s']:8.1f} clips per worker CPU-second ({r['ms_per_clip']:.2f} "
                         f"ms/clip) = {r['clips_per_cpu_s'] / base:.1f}x the cpu mode")
        ok = res["ray_stage_ratio"] >= res["target_ratio"]
        lines.append(f"    device / cpu at the same decode_batch_size: {res['ray_stage_ratio']:.1f}x "
                     f"(target >= {res['target_ratio']:g}x: {'met' if ok else 'NOT MET'})")
    t = res["trainer_cpu"]
    lines.append(f"  trainer side on CPU (decode_clips, batches of {s['trainer_batch']}): {t['clips_per_cpu_s']:.1f} "
                 f"clips/s/core = {t['ms_per_clip']:.2f} ms/clip")
    b = res["bytes_per_clip"]
    lines.append(f"  load average during the run: {', '.join(f'{v:.1f}' for v in res['load_average'])} "
                 f"(a shared machine: CPU-time figures, not wall time)")
    lines.append(f"  object store per clip: cpu mode {b['cpu'] / 2**20:.2f} MiB of pixels, device mode "
                 f"{b['device'] / 2**10:.0f} KiB of JPEG ({b['cpu'] / b['device']:.0f}x less)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`eco bench device_decode [--quick] [--out DIR]`: prints the table; exit status 1 if a full run misses the
    target ratio."""
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    out = getattr(args, "out", None)
    quick = bool(getattr(args, "quick", False))
    res = measure(Path(out) / "work" if out else None, quick=quick)
    print(format_results(res))
    if out:
        write_results(out, "device_decode", res)
    ratio = res["ray_stage_ratio"] if res["ray_stage"] else res["worker_ratio"]
    return 1 if not quick and ratio < TARGET_RATIO else 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    sys.exit(run(parser.parse_args()))
