"""`eco bench steps`: what a `train.max_steps` run costs on a small and on a large manifest.

The same run (ECO-Lite 4F at 64 px, 2 Ray Train workers x batch 4, `train.max_steps`, then the end-of-run
evaluation on the same 40 validation videos) on a manifest of `--small` training videos and on one of `--large`.
Each run is a child process with its own local Ray instance; its CPU time is that of every process it started
(driver, Ray's daemons, training workers, decode tasks and their decode children), read from the kernel's
accounting of reaped children (this process is their subreaper, so orphans are counted too). The large manifest
lists the small one's files again under new video ids: per row the decoding work is the same, only the number of
rows differs. Baseline: the small run, in the same invocation. Goal: CPU-time ratio <= 1.25, and the clips
decoded for training = the steps' clips (+ the prefetch window at most).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.bench._common import make_videos, write_results

WORKERS, BATCH = 2, 4
VAL_VIDEOS = 40


def _manifest(files_dir: Path, out: Path, train_rows: int) -> Path:
    """An `eco prepare` directory whose training split has `train_rows` rows cycling over files_dir's training
    videos (new video ids), and the same validation rows."""
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(files_dir / "manifest.parquet")
    train = table.filter(pc.equal(table.column("split"), "train"))
    val = table.filter(pc.equal(table.column("split"), "val"))
    idx = [i % train.num_rows for i in range(train_rows)]
    rows = train.take(idx)
    rows = rows.set_column(rows.schema.get_field_index("video_id"), "video_id",
                           pa.array([f"row_{i:06d}" for i in range(train_rows)]))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([rows, val]), out / "manifest.parquet")
    shutil.copy(files_dir / "labels.json", out / "labels.json")
    return out


def _config(manifest: Path, out: Path, max_steps: int):
    from pipeline.config import Config

    return Config().replace({
        "data.manifest": str(manifest), "data.short_side": 64, "data.crop_size": 64, "data.horizontal_flip": False,
        "data.decode_workers": 2, "data.decode_cpus": 0.5, "data.decode_batch_size": BATCH,
        "data.prefetch_batches": 2, "model.num_segments": 4,
        "train.epochs": 1, "train.batch_size": BATCH, "train.max_steps": max_steps, "train.amp": False,
        "train.channels_last": False, "train.log_every_steps": 1000,
        "scaling.num_workers": WORKERS, "scaling.cpus_per_worker": 1.0, "scaling.use_gpu": False,
        "scaling.local_num_cpus": 4, "checkpoint.storage_path": str(out / "runs"),
        "checkpoint.run_name": "steps", "checkpoint.max_failures": 0, "wandb.enabled": False,
    })


def _one(manifest: Path, out: Path, max_steps: int) -> dict[str, Any]:
    """In the child: the run itself."""
    os.environ["RAY_ADDRESS"] = "local"
    from pipeline.training.run import train

    m = train(_config(manifest, out, max_steps)).metrics
    return {k: float(m[k]) for k in ("step", "train_clips", "decoded_train_clips_total", "epoch_rows_trained")}


def _subreaper() -> None:
    """Become the subreaper of this process's descendants, so that Ray's workers, orphaned when their raylet
    stops, are reaped here and their CPU time counted in RUSAGE_CHILDREN (Linux only; elsewhere orphans are
    missed and the figures are a lower bound)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _measure(manifest: Path, out: Path, max_steps: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = out / "result.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench.steps", "--one", str(manifest), "--out", str(out),
                           "--max-steps", str(max_steps)], capture_output=True, text=True)
    _reap_all()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"the run on {manifest} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(result.read_text())
    res["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res


def measure(work_dir: str | Path | None = None, *, small: int = 200, large: int = 6400,
            max_steps: int = 5) -> dict[str, Any]:
    work = Path(work_dir or tempfile.mkdtemp(prefix="eco-bench-steps-"))
    files = make_videos(work / "videos", count=small + VAL_VIDEOS, seconds=1.0, fps=8, size=(80, 64), gop=8,
                        classes=4, val=VAL_VIDEOS)
    _subreaper()
    runs = {}
    for name, rows in (("small", small), ("large", large)):
        manifest = _manifest(files, work / f"manifest_{name}", rows)
        runs[name] = {"train_rows": rows, **_measure(manifest, work / f"run_{name}", max_steps)}
    steps_clips = max_steps * BATCH * WORKERS
    return {"setup": {"max_steps": max_steps, "workers": WORKERS, "batch": BATCH, "val_videos": VAL_VIDEOS,
                      "steps_clips": steps_clips, "prefetch_window": 2 * BATCH * WORKERS},
            "runs": runs, "cpu_ratio": runs["large"]["cpu_s"] / runs["small"]["cpu_s"], "target_ratio": 1.25}


def format_results(res: dict[str, Any]) -> str:
    s, r = res["setup"], res["runs"]
    lines = [f"train.max_steps={s['max_steps']} ({s['workers']} workers x batch {s['batch']}: {s['steps_clips']} "
             f"clips), then evaluation on {s['val_videos']} videos"]
    for name in ("small", "large"):
        x = r[name]
        lines.append(f"  {x['train_rows']:>6} training rows: {x['cpu_s']:7.1f} CPU-s, {int(x['step'])} steps, "
                     f"{int(x['train_clips'])} clips trained, {int(x['decoded_train_clips_total'])} decoded for "
                     "training")
    ok = res["cpu_ratio"] <= res["target_ratio"]
    lines.append(f"  CPU time large / small: {res['cpu_ratio']:.2f}x (target <= {res['target_ratio']:.2f}: "
                 f"{'met' if ok else 'NOT MET'})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = getattr(args, "out", None)
    res = measure(Path(out) / "work" if out else None, max_steps=int(getattr(args, "max_steps", None) or 5))
    print(format_results(res))
    if out:
        write_results(out, "steps", res)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--one", default=None, help="(internal) run once on this manifest directory")
    p.add_argument("--out", default=None)
    p.add_argument("--max-steps", type=int, default=5)
    a = p.parse_args()
    if a.one:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "result.json").write_text(json.dumps(_one(Path(a.one), Path(a.out), a.max_steps)))
        sys.exit(0)
    sys.exit(run(a))
