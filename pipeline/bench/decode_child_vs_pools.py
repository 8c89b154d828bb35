"""The killable decode child (pipeline.data.isolation.IsolatedDecoder) against maintained process pools.

Run: python -m pipeline.bench.decode_child_vs_pools  (pebble: the `bench` extra)

Per candidate, one worker process started with "spawn" (forking a process that runs Ray or torch threads is
unsafe): the time to the first result (start-up), the mean round trip of a real decode call (16 frames of a small
H.264 file), what a call that hangs costs (the time until the next call has succeeded again) and what a child
that crashes (SIGSEGV) reports. The decode call is pipeline.data.decode.decode_frames, the hang and the crash are
tests/faults.py's, so every pool runs the same module-level functions. Figures are for docs/data.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.decode import decode_frames
from pipeline.data.encode import write_video
from pipeline.data.isolation import IsolatedDecoder
from tests.faults import hang, segfault

CALLS = 30
TIMEOUT_S = 3.0  # generous: a loaded machine must not time out the real decode calls


def _video(directory: Path) -> str:
    frames = np.random.default_rng(0).integers(0, 256, (64, 128, 160, 3), dtype=np.uint8)
    return str(write_video(directory / "bench.mp4", frames, 25, gop=16))


def isolated(path: str) -> dict:
    out = {}
    idx = np.arange(0, 64, 4)
    t = time.perf_counter()
    dec = IsolatedDecoder(timeout_s=TIMEOUT_S, max_clips_per_process=10_000)
    dec.decode(path, idx)
    out["start_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(CALLS):
        dec.decode(path, idx)
    out["call_ms"] = 1000 * (time.perf_counter() - t) / CALLS
    t = time.perf_counter()
    try:
        dec._call(path, hang, (path,), {})
    except Exception as e:  # noqa: BLE001
        out["hang"] = type(e).__name__ + ": " + str(e)[-60:]
    dec.decode(path, idx)
    out["hang_recovery_s"] = time.perf_counter() - t
    try:
        dec._call(path, segfault, (path,), {})
    except Exception as e:  # noqa: BLE001
        out["crash"] = type(e).__name__ + ": " + str(e)[-60:]
    dec.decode(path, idx)
    dec.close()
    return out


def pebble_pool(path: str) -> dict:
    import pebble

    out = {}
    idx = np.arange(0, 64, 4)
    t = time.perf_counter()
    pool = pebble.ProcessPool(max_workers=1, max_tasks=10_000, context=multiprocessing.get_context("spawn"))
    pool.schedule(decode_frames, (path, idx), timeout=TIMEOUT_S).result()
    out["start_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(CALLS):
        pool.schedule(decode_frames, (path, idx), timeout=TIMEOUT_S).result()
    out["call_ms"] = 1000 * (time.perf_counter() - t) / CALLS
    t = time.perf_counter()
    try:
        pool.schedule(hang, (path,), timeout=TIMEOUT_S).result()
    except Exception as e:  # noqa: BLE001
        out["hang"] = type(e).__name__ + ": " + str(e)[-60:]
    pool.schedule(decode_frames, (path, idx), timeout=TIMEOUT_S).result()
    out["hang_recovery_s"] = time.perf_counter() - t
    try:
        pool.schedule(segfault, (path,), timeout=TIMEOUT_S).result()
    except Exception as e:  # noqa: BLE001
        out["crash"] = type(e).__name__ + ": " + str(e)[-60:]
    pool.schedule(decode_frames, (path, idx), timeout=TIMEOUT_S).result()
    pool.close()
    pool.join()
    return out


def futures_pool(path: str) -> dict:
    out = {}
    idx = np.arange(0, 64, 4)
    t = time.perf_counter()
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=10_000)
    pool.submit(decode_frames, path, idx).result()
    out["start_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(CALLS):
        pool.submit(decode_frames, path, idx).result()
    out["call_ms"] = 1000 * (time.perf_counter() - t) / CALLS
    t = time.perf_counter()
    try:
        pool.submit(hang, path).result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        out["hang"] = type(e).__name__ + " (the worker keeps hanging: no per-call kill)"
    # The only way out is to kill the pool's processes and build a new pool.
    for p in list(pool._processes.values()):
        p.kill()
    pool.shutdown(wait=True, cancel_futures=True)
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    pool.submit(decode_frames, path, idx).result()
    out["hang_recovery_s"] = time.perf_counter() - t
    try:
        pool.submit(segfault, path).result(timeout=30)
    except Exception as e:  # noqa: BLE001
        out["crash"] = type(e).__name__ + " (the whole pool is broken: rebuild it)"
    pool.shutdown(wait=True)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _video(Path(tmp))
        for name, fn in (("IsolatedDecoder", isolated), ("pebble.ProcessPool", pebble_pool),
                         ("concurrent.futures", futures_pool)):
            result = fn(path)
            print(f"{name:20s} start {result['start_s']:.2f} s | call {result['call_ms']:.1f} ms | hang -> next ok "
                  f"{result['hang_recovery_s']:.2f} s ({result.get('hang')}) | crash: {result.get('crash')}",
                  flush=True)


if __name__ == "__main__":
    main()
