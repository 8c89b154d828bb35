"""`eco bench decode`: clips per CPU-second of the project's decode path against its peers, on the same files and
the same clips, in one run.

A clip is 16 TSN training indices decoded to short side 256 (uint8 RGB), what training asks of the decoder. On
each video, the same sequence of clips goes through:
- project: the path training uses: `probe` (decoder auto: it times both backends on the file and records the
  faster one that decodes it right) -> the probed backend -> pipeline.data.decode.decode_frames (one thread, frames
  scaled in the decoder). Per-file caches are cleared before every clip: in training a decode process meets a
  file once per epoch, so the benchmark must not profit from having just decoded it;
- decord / pyav: decode_frames with each backend forced (what auto chooses between);
- naive decord, naive PyAV, TorchCodec: the peers as their documentation shows them, resized with torchvision
  (pipeline.bench.baselines); TorchCodec only where it is installed (the optional `bench` extra with the OS's
  FFmpeg libraries).
"ratio" is project / the best peer. Videos: synthetic Kinetics-like files (10 s at 30 fps, H.264, GOP 30 and 250,
340x256 and 1280x720) and camera-like ones (sensor noise, hand-held shake, fine detail: what phone footage gives
the encoder, 640x360 and 1280x720, GOP 30 and 60). CPU time is the process's, all threads included, so clips per
CPU-second = clips/s per core. The frame-shard comparison (pipeline.bench.shards) follows in the same run.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.bench._common import CpuTimer, Timing, kinetics_like_frames, write_results

log = logging.getLogger(__name__)

SEGMENTS = 16
SHORT_SIDE = 256
PEERS = ("naive_decord", "naive_pyav", "torchcodec")
PATHS = ("project", "decord", "pyav", *PEERS)
# The project's goal against the best peer, in clips per CPU-second.
TARGET_RATIO = 1.2


def camera_like_frames(seconds: float, fps: int, width: int, height: int, seed: int) -> Iterator[np.ndarray]:
    """Yield uint8 RGB (H, W, 3) frames with what a phone camera gives its encoder: a detailed scene (fine texture
    and edges at every scale), hand-held shake (a random walk of the view), a subject crossing it, slow exposure
    drift, and sensor noise (per-pixel luma and chroma noise, stronger in the dark, plus faint row noise).

    Harder for the codecs than kinetics_like_frames (which is mostly smooth): more bits per frame and more
    residual to decode, as in real footage.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    margin = 48
    h, w = height + 2 * margin, width + 2 * margin
    # Detail at several scales: coarse shapes, medium texture, fine grain (upsampled noise octaves).
    scene = np.zeros((h, w, 3), np.float32)
    for cell, weight in ((32, 70.0), (8, 35.0), (2, 18.0)):
        coarse = rng.normal(0.0, 1.0, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        scene += weight * np.kron(coarse, np.ones((cell, cell, 1), np.float32))[:h, :w]
    scene += 120.0
    yy, xx = np.mgrid[0:height, 0:width]
    radius = max(6, min(width, height) // 6)
    pos = np.zeros(2)
    for t in range(n):
        pos = np.clip(pos + rng.normal(0.0, 1.5, 2), -margin + 1, margin - 1)  # hand-held shake
        dy, dx = int(margin + pos[0]), int(margin + pos[1])
        frame = scene[dy:dy + height, dx:dx + width].copy()
        cx = int(width * (0.1 + 0.8 * t / max(1, n - 1)))
        cy = int(height * (0.55 + 0.15 * np.sin(4 * np.pi * t / max(1, n))))
        person = (xx - cx) ** 2 + ((yy - cy) * 0.6) ** 2 < radius ** 2
        frame[person] = frame[person] * 0.3 + np.array([150.0, 90.0, 70.0], np.float32)
        frame *= 1.0 + 0.08 * np.sin(2 * np.pi * t / (3.0 * fps))  # auto-exposure drift
        luma_sigma = 2.5 + 5.0 * (1.0 - np.clip(frame.mean(axis=2, keepdims=True) / 255.0, 0, 1))
        frame += rng.normal(0.0, 1.0, (height, width, 1)).astype(np.float32) * luma_sigma  # shot noise
        frame += rng.normal(0.0, 2.0, (height, width, 3)).astype(np.float32)  # chroma noise
        frame += rng.normal(0.0, 1.0, (height, 1, 1)).astype(np.float32)  # row (read-out) noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _videos(quick: bool) -> list[dict]:
    """(content, width, height, gop) of the benchmark's videos."""
    if quick:
        return [dict(content="kinetics", width=340, height=256, gop=30),
                dict(content="camera", width=640, height=360, gop=30)]
    return [dict(content="kinetics", width=340, height=256, gop=30),
            dict(content="kinetics", width=340, height=256, gop=250),
            dict(content="kinetics", width=1280, height=720, gop=30),
            dict(content="camera", width=640, height=360, gop=30),
            dict(content="camera", width=640, height=360, gop=60),
            dict(content="camera", width=1280, height=720, gop=60)]


def _paths(path: str, info, torchcodec: bool) -> dict[str, Callable]:
    """name -> fn(indices): decode one clip at short side SHORT_SIDE."""
    from pipeline.bench import baselines
    from pipeline.data import decode

    size = (info.width, info.height)

    def project(backend: str) -> Callable:
        def fn(idx):
            # Cold per clip, as in training (see the module docstring).
            decode.clear_caches()
            return decode.decode_frames(path, idx, short_side=SHORT_SIDE, num_threads=1,
                                        num_frames=info.num_frames, size=size, backend=backend)
        return fn

    paths = {"project": project(info.backend), "decord": project("decord"), "pyav": project("pyav"),
             "naive_decord": lambda idx: baselines.naive_decord_clip(path, idx, SHORT_SIDE),
             "naive_pyav": lambda idx: baselines.naive_pyav_clip(path, idx, SHORT_SIDE)}
    if torchcodec:
        paths["torchcodec"] = lambda idx: baselines.torchcodec_clip(path, idx, SHORT_SIDE)
    return paths


def _measure(fns: dict[str, Callable], clips: list[np.ndarray]) -> dict[str, Timing]:
    """CPU time of every path on the same clips, interleaved clip by clip (the order rotating), so that a load
    that changes during the run (a shared machine) weighs on every path alike."""
    names = list(fns)
    for name in names:
        fns[name](clips[-1])  # warm-up: page cache, lazy imports (a clip not among the measured ones)
    cpu = dict.fromkeys(names, 0.0)
    wall = dict.fromkeys(names, 0.0)
    for i, idx in enumerate(clips[:-1]):
        for name in names[i % len(names):] + names[:i % len(names)]:
            with CpuTimer() as timer:
                fns[name](idx)
            cpu[name] += timer.cpu_s
            wall[name] += timer.wall_s
    return {name: Timing(clips=len(clips) - 1, wall_s=wall[name], cpu_s=cpu[name]) for name in names}


def measure(work_dir: Path, *, quick: bool) -> dict:
    """Write the videos, probe them, measure every path on the same clips; returns the results dict."""
    import torch

    from pipeline.bench import baselines
    from pipeline.data import decode, sampling
    from pipeline.data.encode import write_video

    torch.set_num_threads(1)  # the peers' torchvision resize: one thread, like the decoders
    torchcodec = baselines.torchcodec_available()
    seconds, fps = (4.0 if quick else 10.0), 30
    n_clips = 6 if quick else 21
    rows = []
    for v in _videos(quick):
        name = f"{v['content']}_{v['width']}x{v['height']}_gop{v['gop']}"
        path = work_dir / f"{name}.mp4"
        print(f"writing {path.name} ({seconds:g} s, {fps} fps) ...", flush=True)
        frames = (kinetics_like_frames if v["content"] == "kinetics" else camera_like_frames)(
            seconds, fps, v["width"], v["height"], seed=v["gop"])
        write_video(path, frames, fps, gop=v["gop"], crf=23)
        with CpuTimer() as probe_timer:
            info = decode.probe(str(path))
        rng = np.random.default_rng(0)
        clips = [sampling.train_indices(info.num_frames, SEGMENTS, rng) for _ in range(n_clips)]
        timings = _measure(_paths(str(path), info, torchcodec), clips)
        row = {"video": name, **v, "frames": info.num_frames, "size_bytes": path.stat().st_size,
               "kbit_per_s": 8 * path.stat().st_size / seconds / 1000, "backend": info.backend,
               "trial_ms": info.trial_ms, "probe_cpu_s": probe_timer.cpu_s, "clips": len(clips) - 1,
               **{f"{k}_clips_per_cpu_s": t.clips_per_cpu_s for k, t in timings.items()},
               **{f"{k}_cpu_s": t.cpu_s for k, t in timings.items()}}
        best = max(PEERS, key=lambda k: row.get(f"{k}_clips_per_cpu_s", 0.0))
        row["best_peer"], row["ratio"] = best, row["project_clips_per_cpu_s"] / row[f"{best}_clips_per_cpu_s"]
        rows.append(row)
    # All videos together: total clips / total CPU seconds per path (every path decoded the same clips).
    total = {k: sum(r["clips"] for r in rows) / sum(r[f"{k}_cpu_s"] for r in rows)
             for k in PATHS if all(f"{k}_cpu_s" in r for r in rows)}
    best = max((k for k in PEERS if k in total), key=total.get)
    return {"rows": rows, "total": total, "best_peer": best, "ratio": total["project"] / total[best],
            "torchcodec": torchcodec, "seconds": seconds, "fps": fps}


def format_results(res: dict) -> str:
    """The table `eco bench decode` prints."""
    cols = [k for k in PATHS if k in res["total"]]
    lines = [f"clips per CPU-second (clips/s per core): {SEGMENTS} TSN frames at short side {SHORT_SIDE}, the same "
             f"clips for every path; project = probe (auto) -> its backend -> decode_frames"
             + ("" if res["torchcodec"] else "; TorchCodec not installed (pip install eco-pipeline[bench])"),
             f"{'video':<28}{'backend':>8}" + "".join(f"{c:>13}" for c in cols) + f"{'ratio':>8}  best peer"]
    for r in res["rows"]:
        lines.append(f"{r['video']:<28}{r['backend']:>8}" + "".join(f"{r[f'{c}_clips_per_cpu_s']:>13.2f}" for c in cols)
                     + f"{r['ratio']:>7.2f}x  {r['best_peer']}")
    lines.append(f"{'all videos':<28}{'':>8}" + "".join(f"{res['total'][c]:>13.2f}" for c in cols)
                 + f"{res['ratio']:>7.2f}x  {res['best_peer']}")
    lines.append(f"project / best peer: {res['ratio']:.2f}x (goal {TARGET_RATIO:g}x)")
    return "\n".join(lines)


def run(args) -> int:
    """Generate the videos, measure, print the tables (this function prints: it is the CLI's output)."""
    quick = bool(getattr(args, "quick", False))
    with tempfile.TemporaryDirectory(prefix="eco-bench-decode-") as tmp:
        res = measure(Path(tmp), quick=quick)
    print()
    print(format_results(res))
    # Frame shards: the same 16-frame training clip read from JPEG shards vs the naive MP4 path,
    # measured in this run (pipeline/bench/shards.py owns the measurement and its >= 7x target).
    from pipeline.bench.shards import TARGET_RATIO as SHARDS_TARGET
    from pipeline.bench.shards import format_results as format_shards
    from pipeline.bench.shards import measure_shards

    with tempfile.TemporaryDirectory(prefix="eco-bench-shards-") as tmp:
        shard_results = measure_shards(Path(tmp), quick=quick)
    print()
    print(format_shards(shard_results))
    results = {"benchmark": "decode", "quick": quick, "segments": SEGMENTS, "short_side": SHORT_SIDE, **res,
               "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "shards": shard_results}
    written = write_results(getattr(args, "out", None), "bench_decode", results)
    if written:
        print(f"\nwrote {written}")
    # A full run fails (exit 1) when shards miss their target ratio, so a regression is visible in CI logs.
    return 0 if quick or shard_results["arrow_ratio"] >= SHARDS_TARGET else 1
