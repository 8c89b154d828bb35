"""ECO's online video understanding (Zolfaghari et al., ECCV 2018, section 3.3 and Algorithm 1).

Frames arrive in order. Every `every` frames (the paper: every N frames) the queue Q of new frames is merged into a
working memory S_N of N frames, ECO classifies S_N, and the running prediction is averaged with it:

    S_N := half of S_N (kept) + half of Q (new)     once S_N is full; until then S_N takes all it can
    P   := ECO(S_N)
    P_A := (P_A + P) / 2                            Algorithm 1, "average P and P_A"

Keeping half of the old memory at every update makes older frames thin out geometrically while the memory still
reaches back to the start of the video, so one forward pass of N frames always sees the whole video so far, with
more detail on the recent part. The paper samples the halves at random; we take them evenly spaced (the oldest
kept frame is always frame 0, the newest always the latest frame), so a run is reproducible. The authors' online
script (ECO-efficient-video-understanding/scripts/online_recognition) likewise subsamples older slots evenly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)


def spread(n: int, m: int, *, newest: bool = False) -> np.ndarray:
    """`m` evenly spaced positions out of range(n) (m <= n), both ends included when m >= 2.

    With m == 1 the single position is the oldest (0), or the newest (n - 1) when `newest`.
    """
    if not 0 <= m <= n:
        raise ValueError(f"cannot pick {m} of {n} positions")
    if m == 0:
        return np.zeros(0, np.int64)
    if newest:
        return np.rint(np.linspace(n - 1, 0, m))[::-1].astype(np.int64)
    return np.rint(np.linspace(0, n - 1, m)).astype(np.int64)


def merge_plan(n_memory: int, n_queue: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which positions of the memory (len n_memory) and of the queue (len n_queue) form the next memory.

    While everything fits, everything stays. Otherwise the queue contributes half the memory (ceil(N/2)), or
    more while the memory is still filling up, or all of itself if it holds fewer frames; the rest is kept from
    the old memory, evenly spaced from its oldest frame.
    """
    if n_memory + n_queue <= size:
        return np.arange(n_memory), np.arange(n_queue)
    n_new = min(n_queue, max(math.ceil(size / 2), size - n_memory))
    return spread(n_memory, size - n_new), spread(n_queue, n_new, newest=True)


class WorkingMemory:
    """The working memory S_N (frame indices and their preprocessed frames, in temporal order) and the queue Q."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"working memory size must be >= 1, got {size}")
        self.size = size
        self._memory: list[tuple[int, np.ndarray]] = []
        self._queue: list[tuple[int, np.ndarray]] = []

    def push(self, index: int, frame: np.ndarray) -> None:
        self._queue.append((index, frame))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def indices(self) -> list[int]:
        return [i for i, _ in self._memory]

    def update(self) -> None:
        """Merge the queue into the memory (see `merge_plan`) and empty the queue."""
        old, new = merge_plan(len(self._memory), len(self._queue), self.size)
        self._memory = [self._memory[i] for i in old] + [self._queue[i] for i in new]
        self._queue = []

    def clip(self) -> np.ndarray:
        """The memory as a model input (N, H, W, 3); before it is full, frames repeat as TSN does for short videos."""
        from pipeline.data.sampling import eval_indices

        if not self._memory:
            raise ValueError("the working memory is empty")
        take = eval_indices(len(self._memory), self.size)
        return np.stack([self._memory[i][1] for i in take])


@dataclass(frozen=True)
class OnlineUpdate:
    frame: int  # index of the newest frame consumed (0-based)
    time_s: float  # its presentation time
    latency_ms: float  # memory update + preprocessing + forward, from the frame's arrival to the prediction
    memory: tuple[int, ...]  # frame indices in the working memory
    top_k: tuple[tuple[str, float], ...]  # averaged prediction P_A
    instant_top_k: tuple[tuple[str, float], ...]  # this update's prediction P

    def to_dict(self) -> dict:
        """One entry of timeline.json (and of the server's stream replies)."""
        return {"frame": self.frame, "time_s": round(self.time_s, 4), "latency_ms": round(self.latency_ms, 2),
                "memory_frames": list(self.memory),
                "top_k": [{"label": n, "prob": round(p, 6)} for n, p in self.top_k],
                "instant_top_k": [{"label": n, "prob": round(p, 6)} for n, p in self.instant_top_k]}


@dataclass
class OnlineResult:
    video: str
    fps: float  # the video's frame rate
    frames: int  # frames consumed
    every: int
    memory_size: int
    label_names: tuple[str, ...]
    updates: list[OnlineUpdate]
    averaged: np.ndarray = field(repr=False)  # (updates, C): P_A after each update
    wall_s: float = 0.0  # decode + preprocessing + model, from the opened stream to the last prediction
    # CPU seconds of this process over the same span (all its threads; decoding runs in a child process and is
    # not included): unlike wall time it does not grow when other processes share the cores.
    cpu_s: float = 0.0

    @property
    def throughput_fps(self) -> float:
        """Frames per second this machine keeps up with, decoding included."""
        return self.frames / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def frames_per_cpu_second(self) -> float:
        """Frames per second one fully available core would keep up with (model side, from CPU time)."""
        return self.frames / self.cpu_s if self.cpu_s > 0 else float("inf")

    @property
    def final(self) -> tuple[tuple[str, float], ...]:
        return self.updates[-1].top_k if self.updates else ()

    def to_dict(self) -> dict:
        latencies = np.array([u.latency_ms for u in self.updates]) if self.updates else np.zeros(1)
        return {
            "video": self.video,
            "video_fps": self.fps,
            "frames": self.frames,
            "every": self.every,
            "memory": self.memory_size,
            "throughput_fps": round(self.throughput_fps, 2),
            "cpu_s": round(self.cpu_s, 2),
            "frames_per_cpu_second": round(self.frames_per_cpu_second, 2),
            "mean_latency_ms": round(float(latencies.mean()), 2),
            "p95_latency_ms": round(float(np.percentile(latencies, 95)), 2),
            "final": [{"label": n, "prob": round(p, 6)} for n, p in self.final],
            "timeline": [u.to_dict() for u in self.updates],
        }


def stream_frames(path: str, *, short_side: int, chunk: int = 64,
                  timeout_s: float = 60.0) -> tuple[float, int, Iterator[np.ndarray]]:
    """(fps, frame count, iterator over uint8 frames (H, W, 3) in order), decoded sequentially in chunks.

    Decoding runs in the killable child of `IsolatedDecoder`, `chunk` consecutive frames per request, so a hang
    is bounded; the child keeps the stream open between requests (stream_reader.StreamReader), so every frame is
    decoded once. The frame count is the container's (the stream may end a little earlier or later).
    """
    from pipeline.data.isolation import IsolatedDecoder

    decoder = IsolatedDecoder(timeout_s=timeout_s, max_clips_per_process=1_000_000)
    try:
        # exact=False reads the frame count from the index instead of decoding the whole file first, which a
        # stream could not do; indices past a (rarely) over-reported end repeat the last frame.
        info = decoder.probe(path, exact=False)
    except BaseException:
        decoder.close()
        raise

    def frames() -> Iterator[np.ndarray]:
        try:
            start = 0
            while True:
                got = decoder.stream_chunk(path, start, chunk, short_side=short_side, size=(info.width, info.height),
                                           backend=info.backend,
                                           num_frames=info.num_frames)
                yield from got
                start += len(got)
                if len(got) < chunk:
                    return
        finally:
            decoder.close()

    fps = float(info.fps) if info.fps and info.fps > 0 else 25.0
    return fps, int(info.num_frames), frames()


class OnlineStream:
    """One stream's online state: the working memory, the queue, the running average P_A and the updates so far.

    The model call stays outside, so a caller can batch the clips of many streams (the server does):

        if stream.push(frame):                       # preprocessed on arrival; True when an update is due
            clip = stream.next_clip()                # merges the queue into the memory: (N, crop, crop, 3)
            stream.record(probs_of(clip), arrived)   # P_A := (P_A + P) / 2, an OnlineUpdate
    """

    def __init__(self, preprocessing, label_names, *, every: int = 8, memory: int | None = None, top_k: int = 5,
                 fps: float = 25.0):
        if every < 1:
            raise ValueError(f"--every must be >= 1, got {every}")
        self.preprocessing = preprocessing
        self.label_names = tuple(label_names)
        self.every = every
        self.top_k = top_k
        self.fps = fps
        self.memory = WorkingMemory(memory or preprocessing.num_segments)
        self.frames = 0  # frames pushed so far
        self.updates: list[OnlineUpdate] = []
        self.averaged: list[np.ndarray] = []  # P_A after each update
        self._p_avg: np.ndarray | None = None

    @property
    def queued(self) -> int:
        return self.memory.queued

    def push(self, frame: np.ndarray) -> bool:
        """Preprocess one uint8 frame (H, W, 3) of any size (short side, centre crop) and queue it; True when
        `every` frames are queued, i.e. an update is due."""
        from pipeline.data.clips import centre_view

        prep = self.preprocessing
        view = centre_view(frame[None], short_side=prep.short_side, crop_size=prep.crop_size)  # (1, crop, crop, 3)
        self.memory.push(self.frames, view[0])
        self.frames += 1
        return self.memory.queued >= self.every

    def next_clip(self) -> np.ndarray:
        """Merge the queue into the memory and return the memory as a model input (N, crop, crop, 3)."""
        self.memory.update()
        return self.memory.clip()

    def record(self, probs: np.ndarray, arrived: float) -> OnlineUpdate:
        """Fold this update's class probabilities P (C,) of `next_clip()` into P_A; `arrived` is the
        perf_counter time of the frame that triggered the update."""
        from pipeline.inference.predictor import top_k

        p = np.asarray(probs, np.float32)
        self._p_avg = p if self._p_avg is None else (self._p_avg + p) / 2  # Algorithm 1: P_A := average(P, P_A)
        latency = (time.perf_counter() - arrived) * 1000
        (ids, values), = top_k(self._p_avg[None], self.top_k)
        (inst_ids, inst_values), = top_k(p[None], self.top_k)
        newest = self.frames - 1
        names = self.label_names
        update = OnlineUpdate(
            frame=newest, time_s=newest / self.fps, latency_ms=latency, memory=tuple(self.memory.indices),
            top_k=tuple((names[i], v) for i, v in zip(ids, values)),
            instant_top_k=tuple((names[i], v) for i, v in zip(inst_ids, inst_values)))
        self.updates.append(update)
        self.averaged.append(self._p_avg.copy())
        log.debug("frame %d: %s %.3f (%.0f ms)", newest, names[ids[0]], values[0], latency)
        return update


def online_predict(path: str | Path, predictor, *, every: int = 8, memory: int | None = None,
                   top_k: int = 5) -> OnlineResult:
    """Run ECO online over one video: a prediction every `every` frames (and one at the end of the stream)."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    fps, _, frames = stream_frames(str(path), short_side=predictor.preprocessing.short_side)
    return run_online(frames, predictor, every=every, memory=memory, top_k=top_k, fps=fps, video=str(path))


def run_online(frames: Iterable[np.ndarray], predictor, *, every: int = 8, memory: int | None = None,
               top_k: int = 5, fps: float = 25.0, video: str = "") -> OnlineResult:
    """`online_predict` over frames already decoded (uint8 (H, W, 3) each, in order, any size)."""
    stream = OnlineStream(predictor.preprocessing, predictor.label_names, every=every, memory=memory,
                          top_k=top_k, fps=fps)

    def update(arrived: float) -> None:
        probs, _ = predictor.predict_clips(stream.next_clip()[None])  # (1, C)
        stream.record(probs[0], arrived)

    # The decoder process is up and the stream opened (stream_frames): from here on is the rate a stream is
    # served at, decoding included.
    start, cpu_start = time.perf_counter(), time.process_time()
    for frame in frames:
        arrived = time.perf_counter()
        if stream.push(frame):
            update(arrived)
    if stream.queued:  # the end of the stream: the last frames count too
        update(time.perf_counter())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if not stream.updates:
        raise ValueError(f"{video}: no frames were decoded")
    return OnlineResult(video=video, fps=fps, frames=stream.frames, every=every,
                        memory_size=stream.memory.size, label_names=stream.label_names, updates=stream.updates,
                        averaged=np.stack(stream.averaged), wall_s=wall, cpu_s=cpu)


def plot_timeline(result: OnlineResult, png: str | Path, *, classes: int = 5) -> Path:
    """PNG of the averaged probabilities of the final top classes over time (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    times = [u.time_s for u in result.updates]
    top = np.argsort(-result.averaged[-1])[:classes]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for c in top:
        ax.plot(times, result.averaged[:, c], marker=".", label=result.label_names[c])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability (running average)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(result.video).name}: ECO online, memory {result.memory_size}, every {result.every} "
                 f"frames, {result.throughput_fps:.1f} frames/s")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def write_outputs(result: OnlineResult, out_dir: str | Path) -> tuple[Path, Path]:
    """OUT/timeline.json and OUT/timeline.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timeline = out_dir / "timeline.json"
    timeline.write_text(json.dumps(result.to_dict(), indent=2))
    return timeline, plot_timeline(result, out_dir / "timeline.png")


def online_main(args) -> int:
    """`eco predict --online VIDEO --checkpoint C [--every K] [--memory N] [--out DIR] [--json]`: prints the
    timeline (or the JSON with --json) and writes DIR/timeline.json and DIR/timeline.png."""
    from pipeline.data.decode import DecodeError
    from pipeline.inference.predictor import Predictor

    video = args.videos[0]
    out_dir = Path(args.out) if args.out else Path("outputs/online") / Path(video).stem
    predictor = Predictor.from_checkpoint(args.checkpoint)
    try:
        result = online_predict(video, predictor, every=args.every, memory=args.memory, top_k=args.top_k)
    except DecodeError as e:
        print(f"{video}\n  error ({e.reason}): {getattr(e, 'detail', '') or e}")
        return 1
    timeline, png = write_outputs(result, out_dir)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{video}: {result.frames} frames at {result.fps:g} fps, memory {result.memory_size}, "
          f"prediction every {result.every} frames")
    for u in result.updates:
        name, prob = u.top_k[0]
        print(f"  frame {u.frame:6d}  {u.time_s:7.2f}s  {prob:7.2%}  {name:<30s} {u.latency_ms:8.1f} ms")
    d = result.to_dict()
    print("final: " + ", ".join(f"{n} {p:.2%}" for n, p in result.final))
    print(f"kept up with {result.throughput_fps:.1f} frames/s on {predictor.device.type} (decoding included); "
          f"latency per update mean {d['mean_latency_ms']:.0f} ms, p95 {d['p95_latency_ms']:.0f} ms")
    if predictor.device.type == "cpu":
        print(f"CPU cost {result.cpu_s:.1f} CPU-s for {result.frames} frames: {result.frames_per_cpu_second:.1f} "
              f"frames per CPU-second (model side; independent of other load on the machine)")
    print(f"timeline: {timeline}\nplot:     {png}")
    return 0
