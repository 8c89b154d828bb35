"""The model actors of Ray Data evaluation and batch inference: one path for both.

`add_model_stage(ds, actor_cls, checkpoint=...)` appends an actor pool that runs ECO on decoded uint8 clips: one
GPU per actor when the cluster has GPUs (one actor per GPU by default, on any node), CPU actors otherwise. Each
actor holds one `Predictor` (the model rebuilt from the checkpoint, on the actor's device, in eval mode).

- `ScoreViews` (evaluation): per input row (one view: a temporal clip x a spatial crop of a video), the softmax
  over the classes, next to its video id and label; the driver sums the views of each video exactly.
- `pipeline.inference.batch._Classify` (batch inference): top-k labels, probabilities and features per video.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ModelActor:
    """Holds one Predictor on this actor's device (its GPU when Ray gave it one, else the CPU)."""

    def __init__(self, checkpoint: str, *, amp: bool = False):
        from pipeline.inference.predictor import Predictor

        self.predictor = Predictor.from_checkpoint(checkpoint, amp=amp)


class ScoreViews(ModelActor):
    """Evaluation: rows of (video_id, label, clip_index, clip) -> (video_id, label, clip_index, probs). With
    `finish` (data.decode_on=device) the rows carry JPEG bytes instead of "clip", decoded and cropped here on the
    actor's device (pipeline.data.jpeg_clips)."""

    def __init__(self, checkpoint: str, *, amp: bool = False, finish=None):
        super().__init__(checkpoint, amp=amp)
        self.finish = finish

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.finish is not None:
            from pipeline.data.jpeg_clips import decode_clips

            clips = decode_clips(batch, self.finish, device=self.predictor.device)
        else:
            clips = batch["clip"]
        probs, _ = self.predictor.predict_clips(clips)  # (N, C) float32, on the host
        return {"video_id": batch["video_id"], "label": batch["label"], "clip_index": batch["clip_index"],
                "probs": probs}


def model_pool(actors: int | None = None) -> tuple[int, dict[str, Any], str]:
    """(actors, per-actor resources, "GPU" | "CPU") for the cluster Ray is connected to: one actor per GPU by
    default when it has GPUs, else `actors` (default 1) CPU actors."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return actors or gpus, {"num_gpus": 1}, "GPU"
    return actors or 1, {"num_cpus": 1}, "CPU"


def add_model_stage(ds, actor_cls: type, *, actors: int, resources: dict[str, Any], batch_size: int,
                    **constructor_kwargs: Any):
    """`ds.map_batches(actor_cls, ...)` on a fixed pool of `actors` model actors with `resources` each."""
    import ray

    return ds.map_batches(
        actor_cls,
        fn_constructor_kwargs=constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="numpy",
        **resources,
    )
