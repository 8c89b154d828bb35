"""Decoding videos: `probe` a file for the manifest and `decode_frames` at sampled indices, through the decode
backends (pipeline.data.decord_backend, pipeline.data.pyav_backend), which share one interface.

`backend` / `decoder` is "decord", "pyav" or "auto". auto tries the backends in order (decord, then PyAV, which
decodes every codec of its FFmpeg) and goes on to the next where one cannot decode the file (reason decode_error).
`probe(decoder="auto")` chooses per file and records the choice (`VideoInfo.backend`, the manifest's `backend`
column), so training decodes each file the way the probe chose: PyAV for codecs decord lacks and for damaged files
accepted partially; on files with a short side of TRIAL_MIN_SIDE or more, the backend that decodes a timed trial
clip fastest with the same frames as PyAV (the reference numbering); elsewhere decord.
The path checks, the header, the damage scan and the failure vocabulary (`DecodeError` reasons) are
pipeline.data.video_file's; the reader for online inference is pipeline.data.stream_reader's. Callers decode
through pipeline.data.isolation (a killable, recycled child process): decord can hang or crash in native code.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from pipeline.data.decord_backend import DECORD_BAD_WIDTHS, DecordBackend
from pipeline.data.pyav_backend import PyAVBackend
from pipeline.data.video_file import (
    DAMAGE_REASONS,
    IMAGE_DEMUXERS,
    MIN_SIDE,
    REASONS,
    DecodeError,
    VideoFile,
    VideoInfo,
    open_video,
    scaled_size,
    scan_damage,
    short_error,
)

__all__ = [
    "AUTO_ORDER", "BACKENDS", "DAMAGE_REASONS", "DECORD", "DECORD_BAD_WIDTHS", "MIN_SIDE", "PYAV", "REASONS",
    "DecodeError", "VideoInfo", "backends_for", "choose_backend", "clear_caches", "decode_frames", "probe",
    "same_frames", "scaled_size", "short_error",
]

log = logging.getLogger(__name__)

# The decode backend choices (data.decoder, the manifest's backend column, `eco prepare --decoder`).
BACKENDS = ("auto", "decord", "pyav")
# The backends of this process; each holds its own caches of what it learnt about files.
DECORD = DecordBackend()
PYAV = PyAVBackend()
# auto's order: decord first (fast on small files), PyAV where decord cannot decode the file.
AUTO_ORDER = (DECORD, PYAV)
# The backend whose frames are the reference numbering (FFmpeg's presentable frames); it wins a trial's ties.
REFERENCE = PYAV
# `probe(decoder="auto")` times a clip of TRIAL_FRAMES frames at short side TRIAL_SHORT_SIDE (the training default)
# with each backend on files whose short side is at least TRIAL_MIN_SIDE, and keeps another backend than PyAV only
# where it takes less than TRIAL_MARGIN times PyAV's CPU time and decodes the same frames (mean absolute difference
# per frame below TRIAL_MAX_DIFF: two FFmpeg builds' scalers differ by a few levels). PyAV wins ties: it was the
# faster backend on every video `eco bench decode` measured (docs/benchmarks.md section 8), and one cold clip's
# timing is noisy.
TRIAL_FRAMES = 8
TRIAL_SHORT_SIDE = 256
TRIAL_MIN_SIDE = 128
TRIAL_MARGIN = 0.9
TRIAL_MAX_DIFF = 12.0


def backends_for(name: str) -> tuple:
    """The backends a `backend=` / `decoder=` choice tries, in order; raises ValueError naming the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown decode backend {name!r}; valid: {', '.join(BACKENDS)}")
    return AUTO_ORDER if name == "auto" else tuple(b for b in AUTO_ORDER if b.name == name)


def clear_caches() -> None:
    """Forget what the backends learnt about files in this process (PyAV's packet indexes, decord's static
    files): the next clip of every file is decoded cold, as a training epoch meets it."""
    for backend in AUTO_ORDER:
        backend.clear()


def decode_frames(
    path: str,
    indices,
    *,
    short_side: int | None = None,
    num_threads: int = 1,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Decode exactly the frames at `indices` -> uint8 RGB (len(indices), H, W, 3), in the order given, in display
    orientation (a display rotation applied).

    `num_frames`: the decodable count from `probe` (the manifest); indices are clamped to [0, num_frames), since
    decord repeats the last frame past the real end. Without it, decord's (possibly over-reported) count is used.
    `short_side`: frames come out with this short side (display aspect kept), scaled while decoding.
    `size`: the display (width, height) if known (the manifest has it), saving a header read.
    `num_threads`: the decoder's thread count, explicit (0 = "auto" breaks VP9 in decord, dmlc/decord#246).
    `backend`: "decord", "pyav" (the probe's choice, in the manifest) or "auto" (decord, then PyAV if decord
    cannot decode the file). Raises DecodeError with a reason code.
    """
    path = str(path)
    order = backends_for(backend)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: no frame indices to decode")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (0 breaks VP9 WebM, dmlc/decord#246), got {num_threads}")
    file = open_video(path)
    if num_frames:
        idx = np.clip(idx, 0, max(int(num_frames) - 1, 0))
    # Each frame once and in file order: a clip never seeks backwards nor decodes a frame twice (the order and
    # repeats a sampler asks for, e.g. a short video's repeated indices, are restored from the unique frames).
    wanted, inverse = np.unique(idx, return_inverse=True)
    for i, decoder in enumerate(order):
        try:
            frames = decoder.frames(file, wanted, short_side=short_side, num_threads=num_threads,
                                    num_frames=num_frames, size=size)
            break
        except DecodeError as e:
            if i == len(order) - 1 or e.reason != "decode_error":
                raise
            log.debug("%s: %s failed (%s); decoding with %s", path, decoder.name, e.detail, order[i + 1].name)
    return frames if np.array_equal(wanted, idx) else frames[inverse.reshape(-1)]


def probe(path: str, *, num_threads: int = 1, min_side: int = MIN_SIDE, exact: bool = True,
          decoder: str = "auto", accept_partial: bool = False) -> VideoInfo:
    """Facts about a video for the manifest; `num_frames` counts frames that actually decode.

    `exact` decodes the whole stream once with FFmpeg (PyAV, no pixel conversion) to find damage and count the
    presentable frames, and once with decord at 64x64 where decord is to decode it; with exact=False the count is
    decord's index minus the undecodable head of a mid-GOP cut (no decoding, no damage check).
    A damaged file (see DAMAGE_REASONS) raises DecodeError "corrupt" or "truncated"; with `accept_partial` it is
    accepted with num_frames = the frames that decode cleanly before the damage and `damaged` set to the reason.
    The verdict comes from the same FFmpeg scan whatever the backend, so decord and PyAV agree on it.
    `decoder`: "decord", "pyav", or "auto" (on files with a short side of TRIAL_MIN_SIDE or more: PyAV unless a
    trial clip shows decord faster by TRIAL_MARGIN with the same frames, the timings in `trial_ms`; on smaller
    files decord; PyAV for codecs decord lacks, files decord cannot decode and damaged files accepted partially;
    "decord" refuses a damaged file even with `accept_partial`).
    The result's `backend` names the one chosen.
    Width and height are the display's (rotation applied).
    Raises DecodeError with a reason code.
    """
    order = backends_for(decoder)
    path = str(path)
    file = open_video(path)
    info = file.header()
    if info["format"] in IMAGE_DEMUXERS:
        raise DecodeError(path, "not_a_video", f"a still image ({info['format']} demuxer), not a video")
    width, height = info["width"], info["height"]
    if min(width, height) < min_side:
        raise DecodeError(path, "too_small", f"{width}x{height} frames; need a short side >= {min_side} px")
    scan = scan_damage(file, num_threads=num_threads, accept_partial=accept_partial) if exact else None
    if decoder == "decord" and scan is not None and scan["damage"]:
        # decord's threaded decoder feeds packets ahead of the frame it returns: on a damaged file even the clean
        # head's frames fail now and then (the damaged packet reached first), so a clip would be dropped at random.
        raise DecodeError(path, scan["damage"], f"{scan['damage']} after frame {scan['clean_frames']}: decord cannot "
                                                f"be trusted with a damaged file's clean head; probe it with "
                                                f"decoder auto or pyav to keep those frames")
    trial = None
    if decoder == "auto":
        # Backends that cannot decode this codec are skipped; a damaged file's clean head goes to PyAV: decord's
        # threaded decoder reads packets ahead of the frame it returns, so its random access meets the damage.
        order = tuple(b for b in order if not b.unsupported(info))
        if scan is not None and scan["damage"]:
            order = (PYAV,)
        elif scan is not None and _worth_a_trial(info, scan["frames"]):
            trial = _trial(file, info, scan["frames"], num_threads=num_threads)
            if trial:  # the winner first, the others as fallbacks
                order = tuple(sorted(order, key=lambda b: b.name != trial[0]))
    result = _probe_first_that_decodes(file, info, order, scan, exact=exact, num_threads=num_threads)
    if trial:
        result = dataclasses.replace(result, trial_ms=trial[1])
    if scan is not None and scan["damage"]:
        if result.num_frames > scan["clean_frames"]:
            result = dataclasses.replace(result, num_frames=scan["clean_frames"],
                                         duration=scan["clean_frames"] / result.fps if result.fps > 0 else 0.0)
        result = dataclasses.replace(result, damaged=scan["damage"])
    return result


def _probe_first_that_decodes(file: VideoFile, info: dict[str, Any], order: tuple, scan: dict[str, Any] | None, *,
                              exact: bool, num_threads: int) -> VideoInfo:
    """The probe of the first backend in `order` that decodes the file; the next one is tried where one fails with
    decode_error, and the last one's failure names the earlier ones'."""
    failed: list[tuple[str, str]] = []
    for i, backend in enumerate(order):
        try:
            return backend.probe(file, info, exact=exact, num_threads=num_threads, scan=scan)
        except DecodeError as e:
            if i == len(order) - 1 or e.reason != "decode_error":
                if not failed:
                    raise
                raise DecodeError(file.path, e.reason, e.detail + "".join(f"; {n}: {d}" for n, d in failed)) from e
            log.info("%s: %s cannot decode it (%s); trying the %s backend", file.path, backend.name, e.detail,
                     order[i + 1].name)
            failed.append((backend.name, e.detail))
    raise AssertionError("unreachable: backends_for never returns an empty order")


def _worth_a_trial(info: dict[str, Any], num_frames: int) -> bool:
    """Whether `auto` times the backends on this file (header facts `info`): where a clip costs more than opening
    the file (a few ms), so that the measurement says something about training; smaller files keep decord (a
    choice that does not depend on the machine's load). Not for codecs a backend lacks or several video streams
    (decord may decode another stream than the one described)."""
    return (min(info["width"], info["height"]) >= TRIAL_MIN_SIDE and num_frames >= 2 * TRIAL_FRAMES
            and len(info["video_streams"]) == 1 and not any(b.unsupported(info) for b in AUTO_ORDER))


def _trial(file: VideoFile, info: dict[str, Any], num_frames: int, *, num_threads: int
           ) -> tuple[str, dict[str, float]] | None:
    """(the backend that decodes a trial clip (TRIAL_FRAMES TSN frames at short side TRIAL_SHORT_SIDE) in least
    CPU time among those that decode it like the reference, CPU ms per backend); None where a backend fails (probe
    then goes its usual way).

    Each backend decodes the clip once, cold (a new reader, nothing cached about the file): in training a decode
    process meets a file about once per epoch, so every clip pays that; the scan before has the file in the page
    cache for all."""
    idx = ((np.arange(TRIAL_FRAMES) + 0.5) * num_frames / TRIAL_FRAMES).astype(np.int64)
    width, height = info["width"], info["height"]
    side = TRIAL_SHORT_SIDE if min(width, height) > TRIAL_SHORT_SIDE else None
    cpu_s, frames = {}, {}
    for backend in AUTO_ORDER:
        backend.forget(file.path)
        start = time.process_time()  # on the bytes probe already read (a URI is not fetched again)
        try:
            frames[backend.name] = backend.frames(file, idx, short_side=side, num_threads=num_threads,
                                                  num_frames=num_frames, size=(width, height))
        except DecodeError as e:
            log.info("%s: the %s trial failed (%s)", file.path, backend.name, e.detail)
            return None
        cpu_s[backend.name] = time.process_time() - start
    reference = frames[REFERENCE.name]
    agree = {name: same_frames(f, reference) for name, f in frames.items() if name != REFERENCE.name}
    choice = choose_backend(cpu_s, agree)
    log.debug("%s: trial clip CPU %s%s: %s", file.path, ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in cpu_s.items()),
              "".join(f" ({k}'s frames differ from FFmpeg's)" for k, ok in agree.items() if not ok), choice)
    return choice, {k: round(1e3 * v, 2) for k, v in cpu_s.items()}


def choose_backend(cpu_s: dict[str, float], agree: dict[str, bool]) -> str:
    """The trial's verdict: the reference backend unless another one that decodes the same frames (`agree`)
    takes less than TRIAL_MARGIN times the best CPU time so far (`cpu_s`, by backend name)."""
    choice = REFERENCE.name
    for name, seconds in cpu_s.items():
        if name != choice and agree.get(name, False) and seconds < TRIAL_MARGIN * cpu_s[choice]:
            choice = name
    return choice


def same_frames(a: np.ndarray, b: np.ndarray) -> bool:
    """Two backends' decodes of the same frames: equal up to their scalers' and FFmpeg builds' rounding (mean
    absolute difference below TRIAL_MAX_DIFF on every frame)."""
    if a.shape != b.shape:
        return False
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))
    return bool((diff < TRIAL_MAX_DIFF).all())
