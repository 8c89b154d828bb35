"""The settings of `eco serve` and of the Serve config (deploy/serve.yaml): one typed, frozen dataclass.

No torch or Ray imports here: the CLI builds its parser from this module.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """What the application serves, how it batches and scales, and the limits that protect it."""

    # The model: a project checkpoint (dir or file) or the authors' .pth.tar, or an `eco export` file. Set by the
    # operator only; no request can name a file.
    checkpoint: str | None = None
    exported: str | None = None
    top_k: int = 5  # default for requests that do not ask (1..top_k_max)
    top_k_max: int = 20

    # Dynamic batching on each model replica (ray.serve.batch): a batch runs when it holds max_batch_size clips or
    # when the first clip has waited batch_wait_timeout_s. 10 ms costs little next to one ECO forward (~0.1-1.5 s
    # on CPU, ~10 ms on a GPU) and lets concurrent requests share it.
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01

    # Replicas. Clip replicas autoscale between min and max on ongoing requests per replica; stream shards are a
    # fixed number of single-replica deployments because a stream's working memory lives on one replica (see
    # docs/inference.md, "Serving").
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 8.0  # > max_batch_size / 2, so a replica is only added when batches fill
    stream_shards: int = 1
    # "auto": one GPU per model replica when the cluster has GPUs, else CPU; or a number (fractions share a GPU).
    gpus_per_replica: str | float = "auto"
    cpus_per_replica: float = 1.0
    decoders_per_replica: int = 2  # killable decode children per replica (clips decode concurrently)

    # Limits (each breach is a 4xx with a message; docs/inference.md lists them).
    max_body_mb: float = 64.0  # a clip upload or one JPEG frame
    max_clip_frames: int = 9000  # 5 minutes at 30 fps; longer videos are refused before decoding
    max_frame_pixels: int = 3840 * 2160  # one JPEG frame, checked from its header before decoding
    max_frames_per_request: int = 64  # JPEG frames in one multipart stream request
    decode_timeout_s: float = 30.0
    max_streams: int = 256  # open streams per shard
    stream_idle_s: float = 60.0  # a stream unused this long is forgotten; clients may ask for less, not more
    every_default: int = 8  # frames between updates (eco predict --online --every)
    every_max: int = 64

    # HTTP (eco serve; with `serve deploy` the cluster's Serve config sets them).
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.exported is None):
            raise ValueError("serve settings: give exactly one of checkpoint (a checkpoint) or exported (an "
                             "`eco export` file)")
        positive = ("top_k", "top_k_max", "max_batch_size", "min_replicas", "max_replicas", "stream_shards",
                    "decoders_per_replica", "max_body_mb", "max_clip_frames", "max_frame_pixels", "max_frames_per_request",
                    "max_streams",
                    "stream_idle_s", "every_default", "every_max", "decode_timeout_s", "target_ongoing_requests")
        bad = [f"{k}={getattr(self, k)!r}" for k in positive if not getattr(self, k) > 0]
        if self.min_replicas > self.max_replicas:
            bad.append(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        if str(self.gpus_per_replica) != "auto":
            try:
                if float(self.gpus_per_replica) < 0:
                    raise ValueError
            except ValueError:
                bad.append(f"gpus_per_replica={self.gpus_per_replica!r} (\"auto\" or a number >= 0)")
        if self.batch_wait_timeout_s < 0:
            bad.append(f"batch_wait_timeout_s={self.batch_wait_timeout_s}")
        if bad:
            raise ValueError(f"serve settings: invalid {', '.join(bad)}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def model_source(self) -> str:
        return str(self.checkpoint or self.exported)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ServeSettings":
        """From a Serve config's `args` (or any mapping); unknown keys are an error that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"serve settings: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**values)

    def replace(self, **changes: Any) -> "ServeSettings":
        return replace(self, **changes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`eco serve` flags: one per setting, named like the setting (max_batch_size -> --max-batch-size)."""
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="project checkpoint dir/file or the authors' .pth.tar")
    model.add_argument("--exported", help="a TorchScript (.pt) or ONNX (.onnx) file written by `eco export`")
    defaults = ServeSettings(checkpoint="-")
    for f in fields(ServeSettings):
        if f.name in ("checkpoint", "exported"):
            continue
        value = getattr(defaults, f.name)
        kind = type(value) if not isinstance(value, bool) else str
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=value, help=f"(default: {value})")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for an auto-started local Ray")


def from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings.from_dict({f.name: getattr(args, f.name) for f in fields(ServeSettings)})
