"""Evaluate a project checkpoint on a manifest split: `evaluate(checkpoint, manifest, ...) -> dict`.

Ray Data decodes `num_clips` temporal clips x `crops` spatial crops per video (build_eval_dataset) in CPU tasks on any
node; model actors (pipeline.inference.actors, shared with batch inference: one per GPU when the cluster has GPUs,
CPU actors otherwise) score every view; the driver averages each video's softmax over its views, as in the TSN/ECO
test protocol, and checks that no view is counted twice. At Kinetics scale (20k videos x 10 clips x 3 crops = 600k
views of 93 GFLOPs) the views spread over every GPU of the cluster; only (views x classes) probabilities reach the
driver. Writes report.json, predictions.parquet (one row per video) and confusion.png.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import raystart, storage
from pipeline.model import checkpoint_io
from pipeline.progress import Progress
from pipeline.training.metrics import ClassificationSums, per_class_accuracy

log = logging.getLogger(__name__)


def evaluate(checkpoint: str | os.PathLike, manifest: str | os.PathLike, *, split: str = "val", num_clips: int = 1,
             crops: int = 1, out_dir: str | os.PathLike | None = None, num_cpus: int | None = None,
             actors: int | None = None, batch_size: int | None = None, amp: bool = False,
             decode_on: str | None = None) -> dict[str, Any]:
    """Top-1, top-5, mean class accuracy and per-class accuracy of `checkpoint` on `split` of `manifest`.

    Runs on the Ray cluster: decode tasks produce `num_clips x crops` views per video, `actors` model actors (one
    per GPU by default, else one CPU actor) score them, and the driver averages each video's softmax over its
    views exactly. `num_cpus` sizes an auto-started local Ray instance; `amp` runs the model in bf16 autocast.
    `decode_on` ("cpu" | "device", shards only) overrides the checkpoint's data.decode_on: "device" ships JPEG bytes
    and decodes them on the model actors' devices.
    """
    import ray

    from pipeline.data import pipeline as data_pipeline
    from pipeline.data.run_state import create_run_state
    from pipeline.data.manifest import read_labels, read_manifest
    from pipeline.inference.actors import ScoreViews, add_model_stage, model_pool

    t0 = time.perf_counter()
    read = checkpoint_io.read(checkpoint)  # model.pt: no optimiser state to read
    cfg = read.run_config()  # the authors' files carry none: the defaults with their preprocessing
    if decode_on is not None:
        cfg = cfg.replace({"data.decode_on": decode_on})  # validated: names the key and the valid choices
    label_names = list(read.label_names)
    del read
    manifest_labels = read_labels(manifest)
    if manifest_labels != label_names:
        raise ValueError(f"{manifest}: labels.json ({len(manifest_labels)} classes) differs from the checkpoint's "
                         f"label map ({len(label_names)} classes); evaluate on data prepared with the same labels")
    expected_videos = read_manifest(manifest, split).num_rows

    raystart.ensure_ray(num_cpus=num_cpus)
    run_state = create_run_state()
    ds = data_pipeline.build_eval_dataset(cfg, manifest, split, num_clips=num_clips, crops=crops, run_state=run_state)
    actors, resources, kind = model_pool(actors)
    ds = add_model_stage(ds, ScoreViews, actors=actors, resources=resources,
                         batch_size=batch_size or cfg.train.eval_batch_size, checkpoint=str(checkpoint), amp=amp,
                         finish=data_pipeline.clip_finish(cfg, train=False, crops=crops))
    log.info("evaluating %s on %d videos of %s: %d x %d views each, %d %s model actor(s)", checkpoint,
             expected_videos, split, num_clips, crops, actors, kind)

    # Per video: the sum of softmax over its views (float64), its label and the view indices seen.
    prob_sum: dict[str, np.ndarray] = {}
    label_of: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    with Progress(expected_videos * num_clips * crops, desc="evaluate", unit="views") as progress:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for vid, p, y, view in zip(batch["video_id"], batch["probs"], batch["label"], batch["clip_index"]):
                vid, view = str(vid), int(view)
                if view in seen.setdefault(vid, set()):
                    raise RuntimeError(f"{manifest}: view {view} of video {vid} was scored twice")  # a pipeline bug
                seen[vid].add(view)
                prob_sum[vid] = prob_sum[vid] + p if vid in prob_sum else p.astype(np.float64)
                label_of[vid] = int(y)
            progress.update(len(batch["video_id"]))
    failures = ray.get(run_state.failures.remote())

    video_ids = sorted(prob_sum)
    if not video_ids:
        raise ValueError(f"{manifest}: no video of split {split!r} could be decoded ({len(failures)} failures)")
    views = {v: len(seen[v]) for v in video_ids}
    probs = torch.from_numpy(np.stack([prob_sum[v] / views[v] for v in video_ids]))  # (V, C) float64
    labels = torch.tensor([label_of[v] for v in video_ids])
    sums = ClassificationSums(len(label_names))
    # The video-level loss: cross-entropy of the view-averaged softmax (with one view, the clip's own loss).
    loss_sum = -torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).sum()
    sums.update(probs, labels, loss_sum)
    m = sums.compute()
    per_class = per_class_accuracy(sums.confusion)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "manifest": str(manifest),
        "split": split,
        "num_clips": num_clips,
        "crops": crops,
        "videos": len(video_ids),
        "videos_expected": expected_videos,
        "videos_failed": len({f["video_id"] for f in failures}),
        "incomplete_videos": sum(views[v] != num_clips * crops for v in video_ids),
        "views": sum(views.values()),
        "model_actors": f"{actors} {kind}",
        "top1": m["top1"],
        "top5": m["top5"],
        "mean_class_acc": m["mean_class_acc"],
        "loss": m["loss"],
        "per_class": {name: (None if math.isnan(a) else a) for name, a in zip(label_names, per_class.tolist())},
        "confusion": sums.confusion.long().tolist(),
        "seconds": time.perf_counter() - t0,
    }

    # A local directory or a URI (s3://...): every file goes through pipeline.storage, so URIs keep their scheme.
    out = storage.absolute(out_dir) if out_dir is not None else _default_out_dir(checkpoint, split)
    storage.makedirs(out)
    _write_predictions(storage.join(out, "predictions.parquet"), video_ids, labels, probs.float(), label_names, views)
    _plot_confusion(storage.join(out, "confusion.png"), sums.confusion.long().numpy(), label_names,
                    title=f"{split}: top-1 {m['top1']:.1%}, mean class {m['mean_class_acc']:.1%}")
    report["out_dir"] = out
    storage.write_text(storage.join(out, "report.json"), json.dumps(report, indent=2))
    log.info("evaluated %d videos of %s in %.0fs: top-1 %.1f%%", len(video_ids), split, report["seconds"],
             100 * m["top1"])
    return report


def _default_out_dir(checkpoint: str | os.PathLike, split: str) -> str:
    """`<checkpoint dir>-eval-<split>` beside the checkpoint (local or URI)."""
    path = storage.absolute(checkpoint).rstrip("/")
    path = storage.parent(path) if storage.is_file(path) else path
    return storage.join(storage.parent(path), f"{storage.basename(path)}-eval-{split}")


def _write_predictions(path: str, video_ids: list[str], labels: torch.Tensor, probs: torch.Tensor,
                       label_names: list[str], views: dict[str, int]) -> None:
    k = min(5, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    pred = top_i[:, 0]
    table = pa.table({
        "video_id": pa.array(video_ids, pa.string()),
        "label": pa.array(labels.tolist(), pa.int32()),
        "label_name": pa.array([label_names[i] for i in labels.tolist()], pa.string()),
        "pred": pa.array(pred.tolist(), pa.int32()),
        "pred_name": pa.array([label_names[i] for i in pred.tolist()], pa.string()),
        "correct": pa.array((pred == labels).tolist(), pa.bool_()),
        "prob": pa.array(top_p[:, 0].tolist(), pa.float32()),
        "top5": pa.array(top_i.tolist(), pa.list_(pa.int32())),
        "top5_prob": pa.array(top_p.tolist(), pa.list_(pa.float32())),
        "views": pa.array([views[v] for v in video_ids], pa.int32()),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(path, sink.getvalue().to_pybytes())


def _plot_confusion(path: str, confusion: np.ndarray, label_names: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on workers or CI
    import matplotlib.pyplot as plt

    n = len(label_names)
    size = min(4 + 0.35 * n, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 40:  # beyond that, names and counts are unreadable
        ax.set_xticks(range(n), label_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), label_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())
