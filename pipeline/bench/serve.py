"""`eco bench serve`: `eco serve` under a bounded load on localhost against `eco predict`'s per-clip cost.

One Kinetics-like H.264 clip (340x256, 30 fps, 2 s) is posted to POST /v1/clips by 1, 8 and 32 concurrent
clients, a fixed number of requests each level; per level: p50 / p99 latency, clips/s and the mean batch the
replica ran. Then 1, 8 and 32 concurrent streams each post the same 32 JPEG frames (an update every 4), one frame
per request and then 4 per request (multipart): p50 / p99 of the requests that triggered an update, updates/s and the mean batch of the stream shard, against
`eco predict --online`'s loop (`run_online`, one forward per update) on the same frames. The baseline is what `eco predict` does per video in one process: decode + preprocess + one forward
of batch 1 (`Predictor.predict([clip])`), timed over the same number of clips. The baseline process uses as many
torch threads as the replica (1 CPU by default), so the ratio is the gain of batching and of overlapping decoding
with the model, not of more cores (decoding runs in child processes in both).

The model is a randomly initialised ECO-Lite (the cost does not depend on the weights), by default 4 segments at
112 px so a 2-core machine finishes in minutes; `--quick` sends fewer requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LEVELS = (1, 8, 32)  # concurrent clients
SEGMENTS, SHORT_SIDE, CROP = 4, 128, 112
STREAM_FRAMES, STREAM_EVERY = 32, 4  # per stream: 32 JPEG frames (340x256), an update every 4


def _checkpoint(directory: Path, *, segments: int, short_side: int, crop: int) -> Path:
    import torch

    from pipeline.config import Config
    from pipeline.model import eco_lite
    from pipeline.training.checkpoint import build_state, save_checkpoint

    cfg = Config().replace({"model.num_segments": segments, "data.short_side": short_side, "data.crop_size": crop})
    torch.manual_seed(0)
    model = eco_lite(num_classes=400, num_segments=segments, dropout=0.0)
    state = build_state(model, None, epoch=0, step=0, config=cfg.to_dict(),
                        label_names=[f"class_{i}" for i in range(400)], data_seed=0, metrics={})
    return save_checkpoint(directory / "ckpt", state)


def _clip(directory: Path) -> Path:
    from pipeline.bench._common import kinetics_like_frames
    from pipeline.data.encode import write_video

    return write_video(directory / "clip.mp4", kinetics_like_frames(2.0, 30, 340, 256, seed=0), 30)


def _post(url: str, data: bytes) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/v1/clips", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=600) as reply:
        json.loads(reply.read())
    return time.perf_counter() - start


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """A multipart/mixed body of JPEG parts, and its content type."""
    boundary = "eco-bench-frame-boundary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: image/jpeg\r\n\r\n" + p + b"\r\n"
                    for p in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/mixed; boundary={boundary}"


def _call(url: str, method: str, data: bytes | None = None, content_type: str | None = None
          ) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=600) as reply:
        body = json.loads(reply.read())
    return body, time.perf_counter() - start


def _frames_jpeg(count: int) -> list[bytes]:
    import io

    from PIL import Image

    from pipeline.bench._common import kinetics_like_frames

    out = []
    for frame in kinetics_like_frames(count / 30, 30, 340, 256, seed=1):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def stream_level(url: str, jpegs: list[bytes], *, streams: int, every: int, per_request: int) -> dict[str, Any]:
    """`streams` concurrent streams, each posting the frames of `jpegs` in order, `per_request` per request
    (multipart); the latency of the requests that triggered an update, updates/s, the shard's mean batch."""
    before = _get(url)["stream_shards"][0]

    def one_stream(_: int) -> list[float]:
        created, _ = _call(f"{url}/v1/streams", "POST", json.dumps({"every": every}).encode())
        frames_url = f"{url}/v1/streams/{created['stream_id']}/frames"
        latencies = []
        for first in range(0, len(jpegs), per_request):
            chunk = jpegs[first:first + per_request]
            data, content_type = _multipart(chunk) if len(chunk) > 1 else (chunk[0], "image/jpeg")
            body, seconds = _call(frames_url, "POST", data, content_type)
            latencies += [seconds] * len(body["new_updates"])
        _call(f"{url}/v1/streams/{created['stream_id']}", "DELETE")
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        latencies = np.array([t for ts in pool.map(one_stream, range(streams)) for t in ts])
    wall = time.perf_counter() - start
    after = _get(url)["stream_shards"][0]
    batches = after["batches"] - before["batches"]
    return {"streams": streams, "frames_per_request": per_request, "frames": streams * len(jpegs), "updates": len(latencies), "wall_s": round(wall, 2),
            "updates_per_s": round(len(latencies) / wall, 2), "frames_per_s": round(streams * len(jpegs) / wall, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
            "mean_batch": round((after["batched_clips"] - before["batched_clips"]) / max(1, batches), 2)}


def _online_baseline(ckpt: Path, jpegs: list[bytes], every: int, device: str) -> float:
    """Seconds per update of `eco predict --online`'s loop (`run_online`) on the same frames, decoded beforehand."""
    import io

    from PIL import Image

    from pipeline.inference import Predictor
    from pipeline.inference.online import run_online

    frames = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
    with Predictor.from_checkpoint(ckpt, device=device) as predictor:
        run_online(frames[:every], predictor, every=every)  # warm-up
        begin = time.perf_counter()
        result = run_online(frames, predictor, every=every)
        return (time.perf_counter() - begin) / len(result.updates)


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=120) as reply:
        return json.loads(reply.read())


def load_level(url: str, data: bytes, *, clients: int, requests: int) -> dict[str, Any]:
    """`requests` POSTs of `data` from `clients` threads; latency percentiles, clips/s, the mean batch."""
    before = _get(url)["clips"]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = np.array(list(pool.map(lambda _: _post(url, data), range(requests))))
    wall = time.perf_counter() - start
    after = _get(url)["clips"]
    batches = after["batches"] - before["batches"]
    return {"clients": clients, "requests": requests, "wall_s": round(wall, 2),
            "clips_per_s": round(requests / wall, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
            "mean_batch": round((after["batched_clips"] - before["batched_clips"]) / max(1, batches), 2)}


def _baseline(ckpt: Path, clip: Path, n: int, device: str) -> tuple[float, dict[int, float]]:
    """Seconds per clip of `eco predict`'s loop over `n` clips, and the model alone (ms per clip at batch 1, 8)."""
    from pipeline.inference import Predictor

    with Predictor.from_checkpoint(ckpt, device=device) as predictor:
        predictor.predict([clip])  # warm-up: decoder child, first forward
        begin = time.perf_counter()
        for _ in range(n):
            predictor.predict([clip], top_k=5)
        per_clip = (time.perf_counter() - begin) / n
        # The model alone: what a batch saves per clip on this device, without decoding or HTTP.
        model_ms = {}
        for size in (1, 8):
            batch = np.zeros((size, SEGMENTS, CROP, CROP, 3), np.uint8)
            predictor.predict_clips(batch)
            repeats = max(1, 16 // size)
            begin = time.perf_counter()
            for _ in range(repeats):
                predictor.predict_clips(batch)
            model_ms[size] = round((time.perf_counter() - begin) / (repeats * size) * 1000, 1)
    return per_clip, model_ms


def measure(*, quick: bool = False, cpus: int = 1, port: int = 8765) -> dict[str, Any]:
    import ray
    import torch
    from ray import serve

    from pipeline.serving import app as serving
    from pipeline.serving.settings import ServeSettings

    requests = {1: 8, 8: 16, 32: 32} if quick else {1: 16, 8: 32, 32: 64}
    with tempfile.TemporaryDirectory(prefix="eco-bench-serve-") as tmp:
        tmp = Path(tmp)
        ckpt = _checkpoint(tmp, segments=SEGMENTS, short_side=SHORT_SIDE, crop=CROP)
        clip = _clip(tmp)
        data = clip.read_bytes()
        jpegs = _frames_jpeg(STREAM_FRAMES // 2 if quick else STREAM_FRAMES)

        # Baseline: `eco predict`'s loop, one clip at a time, in this process with the replica's torch threads (1
        # by default: Ray sets OMP_NUM_THREADS to the replica's CPUs; more threads than free cores makes each
        # forward several times slower on a shared machine).
        torch.set_num_threads(cpus)
        baseline_n = requests[1]
        device = "cuda" if torch.cuda.is_available() else "cpu"  # as the replica's (gpus_per_replica: auto)
        before, _ = _baseline(ckpt, clip, baseline_n, device)

        # The server: one clip replica and one stream shard with `cpus` CPUs each (Ray sets OMP_NUM_THREADS, so
        # torch uses that many threads in the replica).
        ray.init(address="local", num_cpus=2 * cpus, include_dashboard=False, logging_level="warning",
                 log_to_driver=False)
        try:
            settings = ServeSettings(checkpoint=str(ckpt), port=port, min_replicas=1, max_replicas=1,
                                     cpus_per_replica=float(cpus), gpus_per_replica="auto", max_batch_size=8,
                                     batch_wait_timeout_s=0.01, decoders_per_replica=2)
            url = serving.start(settings, name="eco-bench")
            _post(url, data)  # warm-up
            levels = [load_level(url, data, clients=c, requests=requests[c]) for c in LEVELS]
            stream_levels = [stream_level(url, jpegs, streams=c, every=STREAM_EVERY, per_request=n)
                             for n in (1, STREAM_EVERY) for c in LEVELS]
            replica = _get(url)["clips"]
        finally:
            serve.shutdown()
            ray.shutdown()

        # Baseline again, after the server: on a shared machine the load changes during a run, so the baseline
        # brackets the server's measurement (the mean of both is the reference).
        torch.set_num_threads(replica["torch_threads"])
        after, model_ms = _baseline(ckpt, clip, baseline_n, device)
        online_s = _online_baseline(ckpt, jpegs, STREAM_EVERY, device)
        per_clip = (before + after) / 2
    return {"model": f"ECO-Lite {SEGMENTS} segments at {CROP} px (random weights)",
            "clip": "340x256 H.264, 30 fps, 2 s", "cpus": cpus, "torch_threads": replica["torch_threads"],
            "device": replica["device"], "machine_cpus": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "baseline": {"what": "eco predict, one clip at a time", "clips": baseline_n,
                         "ms_per_clip": round(per_clip * 1000, 1), "clips_per_s": round(1 / per_clip, 2),
                         "ms_per_clip_before_after": [round(before * 1000, 1), round(after * 1000, 1)]},
            "model_ms_per_clip": {"batch_1": model_ms[1], "batch_8": model_ms[8]},
            "serve": levels,
            "online_baseline": {"what": "eco predict --online's loop on the same frames (run_online), batch 1",
                                "ms_per_update": round(online_s * 1000, 1), "updates_per_s": round(1 / online_s, 2)},
            "streams": stream_levels, "stream_every": STREAM_EVERY, "stream_frames": len(jpegs), "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}}


def format_results(res: dict[str, Any]) -> str:
    base = res["baseline"]
    lines = [f"eco bench serve: {res['model']}, clip {res['clip']}, {res['cpus']} CPUs per process "
             f"({res['device']}, {res['torch_threads']} torch threads); load average at the end {res['load_average']}",
             f"  eco predict (one clip at a time): {base['ms_per_clip']:.0f} ms per clip = "
             f"{base['clips_per_s']:.2f} clips/s over {base['clips']} clips (mean of "
             f"{base['ms_per_clip_before_after'][0]:.0f} ms before and {base['ms_per_clip_before_after'][1]:.0f} ms "
             f"after the server)",
             f"  the model alone: {res['model_ms_per_clip']['batch_1']:.0f} ms per clip at batch 1, "
             f"{res['model_ms_per_clip']['batch_8']:.0f} ms per clip at batch 8",
             f"  {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'clips/s':>8} {'vs predict':>10} "
             f"{'mean batch':>10}"]
    for r in res["serve"]:
        lines.append(f"  {r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} "
                     f"{r['clips_per_s']:>8.2f} {r['clips_per_s'] / base['clips_per_s']:>9.2f}x "
                     f"{r['mean_batch']:>10.2f}")
    online = res["online_baseline"]
    lines += [f"  streams ({res['stream_frames']} JPEG frames each, an update every {res['stream_every']}): "
              f"eco predict --online's loop {online['ms_per_update']:.0f} ms per update = "
              f"{online['updates_per_s']:.2f} updates/s",
              f"  {'streams':>7} {'fr/req':>6} {'updates':>8} {'p50 ms':>8} {'p99 ms':>8} {'upd/s':>8} "
              f"{'vs online':>10} {'mean batch':>10} {'frames/s':>9}"]
    for r in res["streams"]:
        lines.append(f"  {r['streams']:>7} {r['frames_per_request']:>6} {r['updates']:>8} {r['p50_ms']:>8.0f} "
                     f"{r['p99_ms']:>8.0f} "
                     f"{r['updates_per_s']:>8.2f} {r['updates_per_s'] / online['updates_per_s']:>9.2f}x "
                     f"{r['mean_batch']:>10.2f} {r['frames_per_s']:>9.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipeline.bench._common import write_results

    res = measure(quick=bool(getattr(args, "quick", False)))
    print(format_results(res))
    if getattr(args, "out", None):
        write_results(args.out, "serve", res)
    return 0
