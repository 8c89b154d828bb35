"""Helpers shared by the benchmarks: Kinetics-like test videos, CPU timing, process memory, results and plots."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)


def kinetics_like_frames(seconds: float, fps: int, width: int, height: int, seed: int) -> Iterator[np.ndarray]:
    """Yield uint8 RGB (H, W, 3) frames: a slowly panning, smooth textured scene, a moving object and sensor noise.
    A generator, so that a 720p video never sits in memory.

    What matters for decode and storage benchmarks is that frames look like camera footage to the encoders: mostly
    smooth content that moves (so H.264 uses motion-compensated P/B frames and JPEG compresses like a photo), plus
    a little per-frame noise (so neither is unrealistically cheap).
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    # Smooth texture: low-resolution noise upsampled 16x (bilinear-like via kron + box blur).
    pad = 2 * n + 32
    coarse = rng.integers(40, 220, ((height + pad) // 16 + 2, (width + pad) // 16 + 2, 3)).astype(np.float32)
    texture = np.kron(coarse, np.ones((16, 16, 1), np.float32))
    kernel = np.ones(9, np.float32) / 9
    for axis in (0, 1):
        texture = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, texture)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = max(4, min(width, height) // 8)
    for t in range(n):
        dx, dy = (2 * t) % pad, t % (pad // 2)  # camera pan
        frame = texture[dy:dy + height, dx:dx + width].copy()
        cx = int(width * (0.2 + 0.6 * t / max(1, n - 1)))
        cy = int(height * (0.5 + 0.25 * np.sin(2 * np.pi * t / max(1, n))))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2
        frame[disc] = (230.0, 60.0, 50.0)
        frame += rng.normal(0.0, 3.0, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_videos(out_dir: str | Path, *, count: int, seconds: float, fps: int = 30, size: tuple[int, int] = (340, 256),
                gop: int | None = 250, seed: int = 0, classes: int = 2, val: int = 0) -> Path:
    """Write `count` Kinetics-like H.264 MP4s and their manifest (an `eco prepare` directory); returns the dir.

    The last `val` videos get split "val", the others "train"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.decode import probe
    from pipeline.data.encode import write_video
    from pipeline.data.manifest import MANIFEST_SCHEMA

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    width, height = size
    for i in range(count):
        path = out_dir / f"video_{i:03d}.mp4"
        if not path.exists():
            write_video(path, kinetics_like_frames(seconds, fps, width, height, seed + i), fps=fps, gop=gop)
        info = probe(str(path))
        label = i % classes
        rows.append({"video_id": f"video_{i:03d}", "path": str(path), "label": label, "label_name": f"class_{label}",
                     "split": "val" if i >= count - val else "train", "num_frames": info.num_frames, "fps": info.fps, "width": info.width,
                     "height": info.height, "duration": info.num_frames / (info.fps or fps), "codec": "h264",
                     "size_bytes": path.stat().st_size})
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out_dir / "manifest.parquet")
    (out_dir / "labels.json").write_text(json.dumps([f"class_{k}" for k in range(classes)]))
    return out_dir


@dataclass
class Timing:
    clips: int
    wall_s: float
    cpu_s: float

    @property
    def clips_per_cpu_s(self) -> float:
        """Clips per CPU-second of this process (all its threads): clips/s per core."""
        return self.clips / self.cpu_s if self.cpu_s else float("nan")

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.wall_s if self.wall_s else float("nan")


class CpuTimer:
    """Wall and process CPU time (all threads) of a block."""

    def __enter__(self) -> "CpuTimer":
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self.wall0
        self.cpu_s = time.process_time() - self.cpu0


def rss_bytes(pid: int) -> int:
    """Resident set size of a process from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, so utime/stime/cutime/cstime (fields 14-17) are at 11..14 here.
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces: parse after the last ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def find_processes(substring: str) -> list[int]:
    """PIDs whose command line contains `substring` (Ray titles its worker processes by what they run, e.g.
    "ray::ReadEcoClips")."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and substring in _cmdline(int(p))]


def descendants(pid: int) -> list[int]:
    parents = {int(p): _ppid(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [c for c, pp in parents.items() if pp == parent]
        out.extend(children)
        frontier.extend(children)
    return out


def write_results(out_dir: str | Path | None, name: str, results: dict[str, Any]) -> Path | None:
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    return path


def bar_plot(path: str | Path, labels: list[str], values: list[float], *, ylabel: str, title: str,
             baseline: float | None = None) -> Path:
    """A small bar chart (PNG, ~30 KB) with value labels; `baseline` draws a dashed reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    bars = ax.bar(labels, values, color="#4C72B0")
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)
    if baseline is not None:
        ax.axhline(baseline, color="#C44E52", linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
