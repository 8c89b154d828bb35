"""`eco bench pipeline`: the Ray Data training pipeline's throughput with 1 and 2 decode CPUs, and decode-worker
memory over many clips.

1. Scaling: `pipeline.data.pipeline.build_train_dataset` (manifest rows in the epoch's order -> decode tasks ->
   16-segment clips, multi-scale crop to 224) on Kinetics-like MP4s (340x256, 30 fps, H.264 GOP 250), consumed by the
   driver as fast as it can, with `data.decode_workers` = 1 and then 2 (one logical CPU each) on a local Ray
   instance with 3 logical CPUs. Throughput is clips/s of wall time after the first batch (start-up excluded);
   the ratio 2 CPUs / 1 CPU is the scaling (ideal 2.0 on 2 idle cores). A short warm-up pass before each
   measurement starts the decode worker processes and their decode children, as a training run's first epoch
   does for all later ones. Then the same stage with 2 CPUs on Arrow IPC frame shards of the same videos
   (`data.format=shards`, `pipeline.data.clips.ShardClipDecoder`).
2. Memory: one long epoch (10,000 clips; --quick: 600) through the same pipeline with 2 decode tasks at a time
   (small 160x120 1 s videos at 112 px, so that 10,000 clips take minutes, not an hour, on a small machine). A
   sampler thread reads the resident set size (/proc) of every Ray worker process that has run a decode task and
   of its child decode processes (pipeline.data.isolation.IsolatedDecoder) twice a second. Growth = median RSS over
   the last 10% of clips minus the median over 10-20% (after warm-up). The child is replaced every
   `data.decode_max_clips_per_process` clips, which is what bounds decord's per-reader leak.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import raystart
from pipeline.bench._common import (
    bar_plot,
    cpu_seconds,
    descendants,
    find_processes,
    make_videos,
    rss_bytes,
    write_results,
)

log = logging.getLogger(__name__)

# Ray titles a worker process by the task it runs: "ray::ReadEcoClips" while it
# decodes, "ray::IDLE" between tasks. The same processes decode every batch (Ray reuses its workers), so every
# process seen decoding is remembered (with its CPU time when first seen) until the driver exits.
DECODER_TITLE = "ReadEcoClips"
_decoders: dict[int, float] = {}
_decoders_lock = threading.Lock()


def _decode_workers() -> tuple[list[int], list[int]]:
    """(alive worker processes of this driver that have run a decode task, those decoding right now)."""
    # Only this driver's Ray instance (its raylet is our child): other Ray sessions on the machine may decode too.
    mine = set(descendants(os.getpid()))
    with _decoders_lock:
        now = [pid for pid in find_processes(DECODER_TITLE) if pid in mine]
        for pid in now:
            if pid not in _decoders:
                _decoders[pid] = sum(cpu_seconds(p) for p in [pid, *descendants(pid)])
        return [p for p in _decoders if p in mine], now


def _config(decode_workers: int, *, max_clips_per_process: int = 2000, short_side: int = 256, crop: int = 224):
    from pipeline.config import Config

    return Config().replace({
        "model.num_segments": 16, "data.short_side": short_side, "data.crop_size": crop,
        "data.decode_workers": decode_workers, "data.decode_cpus": 1.0, "data.decode_batch_size": 4,
        "data.decode_max_clips_per_process": max_clips_per_process, "train.seed": 0,
    })


def _manifest_table(manifest_dir: Path, copies: int, *, rename: bool = True):
    """The manifest's rows repeated `copies` times, under distinct video_ids (distinct TSN offsets per copy) when
    `rename`. Shard rows keep their ids: the shard reader checks that a batch holds the video the row names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = pq.read_table(manifest_dir / "manifest.parquet")
    if not rename:
        return pa.concat_tables([base] * copies)
    tables = []
    for k in range(copies):
        ids = pa.array([f"{v}#{k}" for v in base.column("video_id").to_pylist()])
        tables.append(base.set_column(base.schema.get_field_index("video_id"), "video_id", ids))
    return pa.concat_tables(tables)


class _RssSampler(threading.Thread):
    """Samples (clips consumed so far, decode workers' RSS, their children's RSS) every `period_s`; the decode
    workers are the processes seen decoding since the sampler started (not idle ones left by earlier runs)."""

    def __init__(self, progress: list[int], period_s: float = 0.5):
        super().__init__(daemon=True)
        self.progress, self.period_s = progress, period_s
        self.samples: list[tuple[int, int, int, int]] = []  # (clips, worker_rss, child_rss, workers)
        self._stop_event = threading.Event()
        self.seen: set[int] = set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            alive, now = _decode_workers()
            self.seen.update(now)
            workers = [w for w in alive if w in self.seen]
            children = [c for w in workers for c in descendants(w)]
            self.samples.append((self.progress[0], sum(rss_bytes(w) for w in workers),
                                 sum(rss_bytes(c) for c in children), len(workers)))
            self._stop_event.wait(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _decode_cpu_seconds() -> float:
    """CPU seconds used by this driver's decode workers and their decode child processes since each was first
    seen decoding."""
    return sum(sum(cpu_seconds(p) for p in [a, *descendants(a)]) - _decoders[a] for a in _decode_workers()[0])


def _consume(ds, progress: list[int]) -> tuple[int, float, float, float]:
    """Iterate the whole dataset (a partial iteration would keep its tasks, and their CPU slots, busy);
    returns (clips, seconds after the first batch, clips in the first batch, decode CPU-seconds after it)."""
    first_t = None
    first_n = 0
    cpu0 = cpu1 = 0.0
    n = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        n += len(batch["label"])
        progress[0] = n
        if first_t is None:
            first_t, first_n, cpu0 = time.perf_counter(), n, _decode_cpu_seconds()
        cpu1 = _decode_cpu_seconds()
    return n, time.perf_counter() - (first_t or time.perf_counter()), first_n, max(cpu1 - cpu0, 0.0)


def _shard_stage(manifest_dir: Path, work: Path, *, clips: int) -> dict[str, Any]:
    """The same Ray Data stage (`data.format=shards`: rows in the epoch's order -> decode tasks, 2 at a time, 1
    CPU each) reading Arrow IPC frame shards of the same videos with `ShardClipDecoder`."""
    import ray

    from pipeline.data.pipeline import build_train_dataset
    from pipeline.data.run_state import create_run_state
    from pipeline.data.shard_writer import write_shards

    shard_dir = work / "shards"
    if not (shard_dir / "manifest.parquet").exists():
        write_shards(manifest_dir, shard_dir, short_side=256, quality=90)
    videos = _manifest_table(shard_dir, copies=1, rename=False).num_rows
    table = _manifest_table(shard_dir, copies=-(-clips // videos), rename=False).slice(0, clips)
    state = create_run_state()
    cfg = _config(2).replace({"data.format": "shards"})
    _consume(build_train_dataset(cfg, table.slice(0, 16), run_state=state), [0])  # warm-up, as for MP4
    ds = build_train_dataset(cfg, table, run_state=state)
    n, steady_s, first, cpu_s = _consume(ds, [0])
    failed = ray.get(state.failures.remote())
    ray.kill(state)
    if n != clips:
        raise RuntimeError(f"frame-shard stage returned {n} of {clips} clips: {failed[:3]}")
    return {"cpus": 2, "clips": n, "clips_per_s": (n - first) / steady_s if steady_s > 0 else float("nan"),
            "decode_cpu_s": cpu_s, "clips_per_decode_cpu_s": (n - first) / cpu_s if cpu_s > 0 else float("nan"),
            "load_average": os.getloadavg()[0]}


def measure(work_dir: str | Path | None = None, *, quick: bool = False, memory_clips: int | None = None,
            scaling_clips: int | None = None) -> dict[str, Any]:
    import ray

    from pipeline.data.pipeline import build_train_dataset
    from pipeline.data.run_state import create_run_state

    work = Path(work_dir or tempfile.mkdtemp(prefix="eco-bench-pipeline-"))
    seconds = 3.0 if quick else 10.0
    n_videos = 4 if quick else 8
    manifest_dir = make_videos(work / "videos", count=n_videos, seconds=seconds, fps=30, size=(340, 256), gop=250)
    scaling_clips = scaling_clips or (32 if quick else 240)
    memory_clips = (600 if quick else 10_000) if memory_clips is None else memory_clips

    started_ray = False
    if not ray.is_initialized():
        # 2 logical CPUs for the decode tasks plus 1 spare for Ray Data's own small tasks. The driver consumes
        # without a Ray CPU.
        raystart.ensure_ray(num_cpus=3, object_store_memory=512 * 2**20)
        started_ray = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        scaling = []
        for workers in (1, 2):
            table = _manifest_table(manifest_dir, copies=-(-scaling_clips // n_videos)).slice(0, scaling_clips)
            state = create_run_state()
            # Warm-up: a few batches per decode slot, so that each slot has a worker process with a running decode
            # child (what every epoch after the first of a training run finds); the measured pass is the next one.
            _consume(build_train_dataset(_config(workers), table.slice(0, 8 * workers), run_state=state), [0])
            ds = build_train_dataset(_config(workers), table, run_state=state)
            progress = [0]
            t0 = time.perf_counter()
            n, steady_s, first, cpu_s = _consume(ds, progress)
            total_s = time.perf_counter() - t0
            rate = (n - first) / steady_s if steady_s > 0 else float("nan")
            # Clips per decode CPU-second: unaffected by other load on the machine; equal for 1 and 2 decode tasks when
            # the pipeline adds no per-clip cost as it scales.
            scaling.append({"cpus": workers, "clips": n, "seconds": total_s, "steady_seconds": steady_s,
                            "clips_per_s": rate, "decode_cpu_s": cpu_s,
                            "clips_per_decode_cpu_s": (n - first) / cpu_s if cpu_s > 0 else float("nan"),
                            "load_average": os.getloadavg()[0]})
            log.info("%d decode CPU(s): %.2f clips/s", workers, rate)
            ray.kill(state)
            del ds
        ratio = scaling[1]["clips_per_s"] / scaling[0]["clips_per_s"]
        shards = _shard_stage(manifest_dir, work, clips=scaling_clips * 4)

        if memory_clips <= 0:
            return {"setup": {"videos": "340x256 30 fps H.264", "scaling_video_seconds": seconds,
                              "scaling_gop": 250, "segments": 16, "crop": 224},
                    "scaling": scaling, "scaling_ratio": ratio, "shards": shards, "memory": None}

        # Memory: one long epoch, 2 decode tasks at a time. Small, short videos (160x120, 1 s, 16 segments at 112 px) make
        # 10,000 clips affordable on a small machine; what leaks (readers, buffers, Python objects) leaks per clip.
        mem_dir = make_videos(work / "videos_small", count=8, seconds=1.0, fps=30, size=(160, 120), gop=30, seed=100)
        table = _manifest_table(mem_dir, copies=-(-memory_clips // 8)).slice(0, memory_clips)
        state = create_run_state()
        ds = build_train_dataset(_config(2, max_clips_per_process=2000, short_side=112, crop=112), table,
                                 run_state=state)
        progress = [0]
        sampler = _RssSampler(progress)
        sampler.start()
        t0 = time.perf_counter()
        try:
            n, _, _, _ = _consume(ds, progress)
        finally:
            sampler.stop()
        mem_seconds = time.perf_counter() - t0
        ray.kill(state)
    finally:
        if started_ray:
            ray.shutdown()

    samples = [s for s in sampler.samples if s[3] > 0]
    total = [(c, a + ch) for c, a, ch, _ in samples]

    def window(lo: float, hi: float, index: int) -> float:
        vals = [s[index] for s in samples if lo * n <= s[0] <= hi * n] or [0]
        return statistics.median(vals) / 2**20

    early_total = statistics.median([t for c, t in total if 0.1 * n <= c <= 0.2 * n] or [0]) / 2**20
    late_total = statistics.median([t for c, t in total if c >= 0.9 * n] or [0]) / 2**20
    memory = {
        "clips": n, "seconds": mem_seconds, "clips_per_s": n / mem_seconds, "samples": len(samples),
        # Worker processes that ran decode tasks in this epoch (each holds a decode child).
        "decode_processes": len(sampler.seen), "max_concurrent_decode_processes": max((s[3] for s in samples), default=0),
        "worker_rss_mb_early": window(0.1, 0.2, 1), "worker_rss_mb_late": window(0.9, 1.0, 1),
        "child_rss_mb_early": window(0.1, 0.2, 2), "child_rss_mb_late": window(0.9, 1.0, 2),
        "total_rss_mb_early": early_total, "total_rss_mb_late": late_total,
        "growth_mb": late_total - early_total,
        "max_total_rss_mb": max((t for _, t in total), default=0) / 2**20,
        # After the first 1% of clips: excludes the start-up, when the decode children are starting.
        "max_total_rss_mb_after_start": max((t for c, t in total if c >= 0.01 * n), default=0) / 2**20,
        "trace": [(c, t / 2**20) for c, t in total][:: max(1, len(total) // 400)],
    }
    return {"setup": {"videos": "340x256 30 fps H.264", "scaling_video_seconds": seconds, "scaling_gop": 250,
                      "segments": 16, "crop": 224, "memory_videos": "160x120 1 s GOP 30, crop 112",
                      "decode_max_clips_per_process": 2000},
            "scaling": scaling, "scaling_ratio": ratio, "shards": shards, "memory": memory}


def format_results(res: dict[str, Any]) -> str:
    s = res["scaling"]
    m = res["memory"]
    lines = ["Ray Data pipeline (decode tasks -> 16-segment clips at 224), Kinetics-like 340x256 MP4",
             f"  {'decode CPUs':12s} {'clips':>6s} {'clips/s':>8s} {'clips/decode-CPU-s':>19s} {'load avg':>9s}"]
    for r in s:
        lines.append(f"  {r['cpus']:<12d} {r['clips']:6d} {r['clips_per_s']:8.2f} "
                     f"{r.get('clips_per_decode_cpu_s', float('nan')):19.2f} {r.get('load_average', 0):9.1f}")
    lines.append(f"  scaling 2 CPUs / 1 CPU: {res['scaling_ratio']:.2f}x (ideal 2.00)")
    sh = res.get("shards")
    if sh:
        lines.append(f"  frame shards, 2 CPUs: {sh['clips_per_s']:.2f} clips/s, {sh['clips_per_decode_cpu_s']:.2f} "
                     f"clips/decode-CPU-s ({sh['clips_per_s'] / s[1]['clips_per_s']:.1f}x the MP4 stage's clips/s)")
    if m is None:
        return "\n".join(lines)
    lines.append(f"  decode worker memory over {m['clips']:,} clips ({m['clips_per_s']:.1f} clips/s, 2 decode tasks at a "
                 f"time on {m.get('decode_processes', '?')} worker processes): "
                 f"workers + decode children {m['total_rss_mb_early']:.0f} MiB at 10-20% -> "
                 f"{m['total_rss_mb_late']:.0f} MiB at 90-100% (growth {m['growth_mb']:+.0f} MiB, "
                 f"max after start-up {m['max_total_rss_mb_after_start']:.0f} MiB)")
    return "\n".join(lines)


def plot_results(res: dict[str, Any], img_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir = Path(img_dir)
    labels = [f"MP4, {r['cpus']} CPU" for r in res["scaling"]]
    values = [r["clips_per_s"] for r in res["scaling"]]
    if res.get("shards"):
        labels.append("shards, 2 CPU")
        values.append(res["shards"]["clips_per_s"])
    a = bar_plot(img_dir / "pipeline_scaling.png", labels, values, ylabel="clips/s (wall)",
                 title="Ray Data pipeline throughput by decode CPUs and storage")
    if res["memory"] is None:
        return [a]
    trace = res["memory"]["trace"]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.plot([c for c, _ in trace], [r for _, r in trace], linewidth=1)
    ax.set_xlabel("clips decoded")
    ax.set_ylabel("RSS of decode workers + children (MiB)")
    ax.set_title("Decode worker memory over one long epoch", fontsize=10)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    b = img_dir / "pipeline_memory.png"
    fig.savefig(b)
    plt.close(fig)
    return [a, b]


def run(args: argparse.Namespace) -> int:
    out = getattr(args, "out", None)
    res = measure(Path(out) / "work" if out else None, quick=bool(getattr(args, "quick", False)),
                  memory_clips=0 if getattr(args, "skip_memory", False) else None)
    print(format_results(res))
    if out:
        write_results(out, "pipeline", res)
        plot_results(res, Path(out) / "img")
    return 0


if __name__ == "__main__":
    import sys

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--skip-memory", action="store_true", help="only the throughput part")
    sys.exit(run(p.parse_args()))
