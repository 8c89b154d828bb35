"""A synthetic video task that needs temporal order: the direction of motion of a textured square.

Every video shows one textured square drifting at constant speed over a textured background, with toroidal
wrap-around (what leaves on the right re-enters on the left). Classes differ ONLY in the direction of motion
(right, left, down, up, then the four diagonals: up to 8 classes). The start position is uniform over the frame
and everything else (colours, textures, square size, speed) is drawn independently of the class, so the position
of the square in any single frame is uniform for every class: each single frame is equally likely under every
class (tests/test_synthetic.py measures it: uniform position histograms, equal class-mean frames, a single-frame
classifier at chance). Several frames in order solve it (a cross-correlation of 4 TSN frames: >= 95 %). Shuffled
frames (the `data.shuffle_frames` control) still reveal the axis of motion (the square's row or column stays put)
but never its sense: opposite directions become indistinguishable, capping accuracy at 50 % for 4 or 8 classes.

Learnability (the demo's ECO-Lite, 112 px, 4-8 segments): the square is large (30-40 % of the side) with strong
contrast; the speed (1.2-2 % of the side per frame) keeps the displacement between two TSN samples visible yet
below half the frame, so the wrap-around never makes the direction ambiguous. Horizontal flipping must be off
for this task (a mirrored "right" clip is a "left" clip).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# (name, (dy, dx)) in class-index order; `classes=K` uses the first K.
DIRECTIONS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("move_right", (0, 1)),
    ("move_left", (0, -1)),
    ("move_down", (1, 0)),
    ("move_up", (-1, 0)),
    ("move_down_right", (1, 1)),
    ("move_up_left", (-1, -1)),
    ("move_down_left", (1, -1)),
    ("move_up_right", (-1, 1)),
)
# Speed per frame as a fraction of the frame side: visible between TSN samples, < half the side between the
# farthest two consecutive samples (32 frames / 4 segments, up to ~15 frames apart in training).
SPEED_RANGE = (0.012, 0.02)
SQUARE_RANGE = (0.30, 0.40)


def class_names(classes: int) -> list[str]:
    if not 2 <= classes <= len(DIRECTIONS):
        raise ValueError(f"classes must be in 2..{len(DIRECTIONS)} (one per motion direction), got {classes}")
    return [name for name, _ in DIRECTIONS[:classes]]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], (H, W): a coarse random grid upsampled bilinearly (wraps around)."""
    grid = rng.uniform(-1, 1, (cells, cells))
    ys = np.linspace(0, cells, height, endpoint=False)
    xs = np.linspace(0, cells, width, endpoint=False)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    y1, x1 = (y0 + 1) % cells, (x0 + 1) % cells
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_clip(direction: int, rng: np.random.Generator, *, size: tuple[int, int] = (128, 128),
                frames: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip of class `direction` -> (uint8 (F, H, W, 3) RGB, float (F, 2) square top-left (y, x))."""
    width, height = size
    side = min(width, height)
    dy, dx = DIRECTIONS[direction][1]
    norm = np.hypot(dy, dx)
    speed = rng.uniform(*SPEED_RANGE) * side
    velocity = np.array([dy, dx]) / norm * speed

    # Background: a random colour with smooth texture; the square: a checkerboard of two colours far from it.
    background_colour = rng.uniform(40, 215, 3)
    background = background_colour + 35 * _smooth_noise(rng, height, width, int(rng.integers(3, 7)))[..., None]
    luminance = background_colour.mean()
    bright = luminance < 128  # contrast: a bright square on dark backgrounds and vice versa
    colour_a = rng.uniform(200, 255, 3) if bright else rng.uniform(0, 50, 3)
    colour_b = colour_a - 45 if bright else colour_a + 45
    # A checkerboard of k x k whole cells (no sliver cells, which would look like a second object).
    cells = int(rng.integers(3, 7))
    cell = max(2, int(round(rng.uniform(*SQUARE_RANGE) * side / cells)))
    square = cell * cells
    start = rng.uniform(0, 1, 2) * np.array([height, width])
    positions = (start + np.arange(frames)[:, None] * velocity) % np.array([height, width])
    top_left = np.round(positions).astype(int)

    # Coordinates of every pixel relative to the square's top-left corner, modulo the frame (the wrap-around),
    # for all frames at once: (F, H) rows and (F, W) columns.
    rows = (np.arange(height)[None, :] - top_left[:, :1]) % height
    cols = (np.arange(width)[None, :] - top_left[:, 1:]) % width
    inside = (rows < square)[:, :, None] & (cols < square)[:, None, :]  # (F, H, W)
    checker = ((rows // cell)[:, :, None] + (cols // cell)[:, None, :]) % 2 == 0  # (F, H, W)
    colours = np.stack([colour_b, colour_a]).round().astype(np.uint8)  # (2, 3)
    base = np.clip(background, 0, 255).astype(np.uint8)
    out = np.where(inside[..., None], colours[checker.astype(np.intp)], base[None])  # (F, H, W, 3) uint8
    return out, positions


def write_videos(out_dir: str | Path, *, classes: int = 4, videos_per_class: int = 40,
                 size: tuple[int, int] = (128, 128), frames: int = 32, fps: float = 16, seed: int = 0) -> list[Path]:
    """Write out_dir/videos/<class_name>/<class_name>_<i>.mp4 (H.264); returns the paths."""
    from pipeline.data.encode import write_video

    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size must be even WIDTHxHEIGHT (H.264 4:2:0), got {size[0]}x{size[1]}")
    if frames < 2 or videos_per_class < 1:
        raise ValueError(f"need frames >= 2 and videos_per_class >= 1, got {frames}, {videos_per_class}")
    names = class_names(classes)
    root = Path(out_dir) / "videos"
    paths = []
    for label, name in enumerate(names):
        for i in range(videos_per_class):
            rng = np.random.default_rng([seed, label, i])
            clip, _ = render_clip(label, rng, size=size, frames=frames)
            # GOP 8: cheap random access for the 4-8 sampled frames.
            paths.append(write_video(root / name / f"{name}_{i:04d}.mp4", clip, fps, gop=8, crf=20))
    log.info("wrote %d synthetic videos (%d classes) to %s", len(paths), len(names), root)
    return paths


def make_synthetic(out_dir: str | Path, *, classes: int = 4, videos_per_class: int = 40,
                   size: tuple[int, int] = (128, 128), frames: int = 32, fps: float = 16, seed: int = 0,
                   probe_workers: int | None = None):
    """Write the synthetic direction-of-motion dataset and its manifest; returns manifest.prepare's summary.

    Videos: out_dir/videos/<class>/<class>_<i>.mp4 (real H.264, `size` = (width, height)); manifest:
    pipeline.data.manifest.prepare with a stratified 25 % validation split (`probe_workers` is passed through).
    """
    from pipeline.data import manifest, sources

    write_videos(out_dir, classes=classes, videos_per_class=videos_per_class, size=size, frames=frames, fps=fps,
                 seed=seed)
    return manifest.prepare(sources.FolderSource(Path(out_dir) / "videos"), out_dir, val_fraction=0.25, seed=seed,
                            probe_workers=probe_workers)
