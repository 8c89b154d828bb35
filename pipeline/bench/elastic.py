"""`eco bench elastic`: what losing and regaining a node costs an elastic run, against a fixed run.

On a two-node local Ray cluster that it starts itself (pipeline.bench._cluster: a head node and one worker node,
one training-worker slot each, decoding pinned to the head), it trains ECO-Lite on the synthetic direction-of-motion
task twice, with the same seed, data, epochs and checkpoints:

1. the baseline: a FIXED run, `scaling.num_workers: 2`, no failure;
2. an ELASTIC run, `scaling.num_workers: [1, 2]` and `checkpoint.every_steps`: in epoch 3, half a checkpoint
   interval after the two workers' first mid-epoch checkpoint of that epoch, the worker node is stopped (SIGTERM to
   its `ray start`, as a spot reclaim does); once the one remaining worker has written a checkpoint of its own,
   the node is started again and the run grows back to two workers.

Measured: seconds from the node loss to the first training batch of the one-worker group, seconds from the node's
return to the first training batch of two workers again (both from a batch hook that stamps every batch rank 0
takes, pipeline.training.loop's `batch_hook`), the optimiser steps redone at each restart (the run's `elastic`
records in its final checkpoint), the wall time of both runs and both runs' final validation accuracy. Ratios are
against the fixed run of the same invocation: the seconds to train again in steps of the fixed run, and the wall
time and accuracy against its own.

Accuracy: the two runs are not bit-identical (different micro-batch splits, redone steps, per-rank random
streams), so they are two draws of the same training; `tolerance` is two standard errors of the difference of two
accuracies measured on the same `val` clips, 2 * sqrt(2 p (1 - p) / n) at the fixed run's accuracy p: the
validation-sampling part of the spread alone (docs/benchmarks.md, section 6).

Sizes (2 cores: ~8 min idle, ~20 min when the machine is shared; `--quick`: half that, an exercise of the
code, too short to compare accuracies): 4 classes,
64x64 px, 16 frames, half the videos held out for validation (a tighter accuracy comparison at the cost of a few
seconds of evaluation), ECO-Lite 4 segments at 64 px, batch 4 per worker (global 8 at both sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.bench._common import write_results

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# The job's upload (the driver's runtime_env working_dir): pipeline/ and jobs/. Top-level folders anchored with "/"
# (a bare "data" would also drop pipeline/data, and the workers would import the venv's installed copy instead).
EXCLUDES = ["/.git", "/.venv", "/outputs", "/data", "/tests", "/docs", "/benchmarks", "/.ci", "*.egg-info", "wandb",
            "__pycache__", ".pytest_cache"]
KILL_EPOCH = 3  # 1-based: the node leaves inside this epoch


@dataclass(frozen=True)
class Sizes:
    videos_per_class: int
    epochs: int
    every_steps: int
    classes: int = 4
    batch: int = 4  # per worker, at 2 workers; the global batch is 8 at both sizes
    resize_interval_s: float = 5.0  # scaling.elastic_resize_monitor_interval_s (default 60 s in recipes)
    lr: float = 0.005  # the demo's, for its global batch of 8 (jobs/configs/synthetic_demo.yaml)


# A checkpoint of ECO-Lite (model + momentum) is ~430 MB whatever the input size: one mid-epoch checkpoint per epoch
# keeps the writes a modest share of a 2-core run.
FULL = Sizes(videos_per_class=48, epochs=8, every_steps=6)   # 96 train / 96 val clips, 12 steps per epoch
QUICK = Sizes(videos_per_class=24, epochs=4, every_steps=3)  # 48 / 48, 6 steps per epoch
# `--demo`: the `make demo` recipe and data (jobs/configs/synthetic_demo.yaml: 96 px crops of 128 px videos, 180
# train / 60 val clips, 20 epochs of 23 steps, ~98 % top-1): the accuracy comparison at an accuracy that means
# something (the small sizes above stay near chance in a few minutes of training). ~30 min per pair on 2 idle cores.
DEMO = Sizes(videos_per_class=60, epochs=20, every_steps=12)


def stamp_batch(events: str, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch hook: rank 0 appends `<unix time> <world size>` for every batch it takes (training first after a
    (re)start: a resumed group trains before it evaluates)."""
    import ray.train

    ctx = ray.train.get_context()
    if ctx.get_world_rank() == 0:
        with open(events, "a") as f:
            f.write(f"{time.time():.3f} {ctx.get_world_size()}\n")
    return batch


def _events(path: Path) -> list[tuple[float, int]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(float(t), int(w)) for t, w in (line.split() for line in lines if line.count(" ") == 1)]


def _registered(run_dir: Path) -> list[str]:
    """Checkpoint directories Ray Train has registered (only those are what a restarted group resumes from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]


def _workers(checkpoint_dir: Path) -> int:
    try:
        return len(json.loads((checkpoint_dir / "workers.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _config(data: Path, storage: Path, name: str, sizes: Sizes, num_workers: str, seed: int = 0):
    from pipeline.config import load_config

    return load_config(None, [
        f"data.manifest={data}", "model.num_segments=4", "model.dropout=0.5",
        "data.short_side=64", "data.crop_size=64", "data.normalization=imagenet", "data.multiscale_crop=false",
        "data.horizontal_flip=false",  # a mirrored "move right" clip is a "move left" clip
        "data.decode_workers=1", "data.decode_batch_size=4", "data.prefetch_batches=1",
        # Decoding on the head node: the node that leaves holds only a training worker.
        "data.decode_cpus=0.5", "data.decode_resources={head_node: 0.01}",
        f"optim.lr={sizes.lr}", "optim.base_batch_size=8", "optim.schedule=cosine", "optim.warmup_epochs=1.0",
        f"train.epochs={sizes.epochs}", f"train.batch_size={sizes.batch}", f"train.eval_every_epochs={sizes.epochs}",
        "train.eval_batch_size=16", "train.log_every_steps=1", f"train.seed={seed}", "train.amp=false",
        "train.channels_last=false",
        "wandb.mode=offline", "wandb.log_sample_clips=0",
        *_cluster_overrides(storage, name, sizes, num_workers),
    ])


def _cluster_overrides(storage: Path, name: str, sizes: Sizes, num_workers: str) -> list[str]:
    """What both recipes set for the two-node cluster: one training slot per node, the elastic range, checkpoints."""
    return [
        f"scaling.num_workers={num_workers}", "scaling.resources_per_worker={trainer_slot: 1}",
        f"scaling.elastic_resize_monitor_interval_s={sizes.resize_interval_s}",
        "scaling.worker_group_start_timeout_s=15",
        f"checkpoint.storage_path={storage}", f"checkpoint.run_name={name}", "checkpoint.max_failures=3",
        f"checkpoint.every_steps={sizes.every_steps}", "checkpoint.num_to_keep=2",
        # Ask Ray Train for a preemption notice after every step: the SIGTERM below drains the node first.
        "checkpoint.preemption_check_steps=1",
    ]


def _demo_config(data: Path, storage: Path, name: str, sizes: Sizes, num_workers: str, seed: int):
    """The demo recipe as `make demo` runs it, on the two-node cluster: only placement, checkpoints and the
    elastic range differ."""
    from pipeline.config import load_config
    from pipeline.demo import RECIPE

    return load_config(RECIPE, [
        f"data.manifest={data}", f"train.seed={seed}", f"train.epochs={sizes.epochs}", f"optim.lr={sizes.lr}",
        f"train.eval_every_epochs={sizes.epochs}", "wandb.log_sample_clips=0",
        # Decoding on the head node (2 datasets x 2 tasks x 0.5 CPU + its trainer = its 3 CPUs).
        "data.decode_resources={head_node: 0.01}",
        *_cluster_overrides(storage, name, sizes, num_workers),
    ])


class _Preemptor(threading.Thread):
    """Stops the worker node mid-epoch and starts it again, by what the run directory and the batch stamps show."""

    def __init__(self, cluster, run_dir: Path, events: Path, sizes: Sizes, steps_per_epoch: int):
        super().__init__(name="preemptor", daemon=True)
        self.cluster, self.run_dir, self.events, self.sizes = cluster, run_dir, events, sizes
        # Mid-epoch checkpoints fall on multiples of every_steps of the run's step count: the first one inside
        # KILL_EPOCH (whose steps are (KILL_EPOCH - 1) * steps_per_epoch + 1 ... KILL_EPOCH * steps_per_epoch).
        first = ((KILL_EPOCH - 1) * steps_per_epoch // sizes.every_steps + 1) * sizes.every_steps
        if first >= KILL_EPOCH * steps_per_epoch:
            raise ValueError(f"no mid-epoch checkpoint inside epoch {KILL_EPOCH}: every_steps {sizes.every_steps} "
                             f">= the {steps_per_epoch} steps of an epoch")
        self.checkpoint = f"epoch_{KILL_EPOCH:04d}-step_{first:07d}"
        self.t_loss = self.t_return = None
        self.error: BaseException | None = None
        self.done = threading.Event()  # set by the driver when train() returns

    def run(self) -> None:
        try:
            # 1. The two workers' first mid-epoch checkpoint of KILL_EPOCH is registered; half an interval later
            #    (every_steps / 2 more batches of rank 0) the node leaves: those steps are lost and redone.
            self._until(lambda: self.checkpoint in _registered(self.run_dir)
                        and _workers(self.run_dir / self.checkpoint) == 2, f"checkpoint {self.checkpoint}")
            seen = len(_events(self.events))
            self._until(lambda: len(_events(self.events)) >= seen + self.sizes.every_steps // 2, "steps after it")
            self.t_loss = time.time()
            self.cluster.stop_node(self.cluster.procs[1])
            log.info("stopped the worker node (SIGTERM: it drains, then shuts down)")
            # 2. The remaining worker wrote a checkpoint of its own: the node returns (fresh ports).
            self._until(lambda: any(_workers(self.run_dir / d) == 1 for d in _registered(self.run_dir)),
                        "a one-worker checkpoint")
            self.t_return = time.time()
            self.cluster.start_worker("worker-again")
            log.info("started the worker node again")
        except BaseException as e:  # reported by the driver after train() returns
            self.error = e

    def _until(self, condition, what: str, timeout_s: float = 1800) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.done.is_set():
                raise RuntimeError(f"the run ended before {what}: make the run longer (more epochs or videos)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout_s}s")
            time.sleep(0.2)


def _preemption_checkpoints(run_dir: Path) -> list[tuple[int, float]]:
    """(step, unix time) of the checkpoints written on a preemption notice, from the rows the run logged in its
    sealed W&B segments (each is sealed just before its checkpoint is reported)."""
    from pipeline.training.tracking import RUNS_RECORD, read_rows

    record = json.loads((run_dir / RUNS_RECORD).read_text()) if (run_dir / RUNS_RECORD).is_file() else {}
    return [(int(row["train/step"]), float(row["time"])) for r in record.get("runs", []) if r.get("sealed")
            for row in read_rows(r["dir"]) if row.get("elastic/preemption_checkpoint")]


@dataclass(frozen=True)
class _Recorded:
    """A fixed run of an earlier invocation, as its record gives it (`--reuse-fixed`)."""
    metrics: dict[str, float]


def _dropped(checkpoint_dir: Path) -> dict[str, int]:
    """The run's dropped clips by reason, from its final checkpoint (a comparison with any is not a fair one)."""
    path = checkpoint_dir / "decode_failures.json"
    counts: dict[str, int] = {}
    for f in json.loads(path.read_text()) if path.exists() else []:
        counts[f["reason"]] = counts.get(f["reason"], 0) + 1
    return counts


def _run(cfg, events: Path) -> tuple[Any, float]:
    from pipeline.training.run import train

    t0 = time.perf_counter()
    result = train(cfg, batch_hook=functools.partial(stamp_batch, str(events)))
    return result, time.perf_counter() - t0


def _prepare_data(out: Path, sizes: Sizes) -> Path:
    """The synthetic task with half of each class held out (a larger validation set than make_synthetic's 25 %)."""
    from pipeline.data import manifest
    from pipeline.data.synthetic import write_videos

    if not (out / "manifest.parquet").is_file():
        write_videos(out, classes=sizes.classes, videos_per_class=sizes.videos_per_class, size=(64, 64), frames=16,
                     seed=0)
        manifest.prepare(manifest.FolderSource(out / "videos"), out, val_fraction=0.5, seed=0)
    return out


def _prepare_demo_data(out: Path, sizes: Sizes) -> Path:
    """The demo's dataset, as `make demo` writes it (pipeline.demo; DEMO.videos_per_class is the demo's)."""
    from pipeline import demo
    from pipeline.data.synthetic import make_synthetic

    if not (out / "manifest.parquet").is_file():
        make_synthetic(out, classes=demo.CLASSES, videos_per_class=sizes.videos_per_class, size=demo.VIDEO_SIZE,
                       frames=demo.VIDEO_FRAMES, seed=0)
    return out


def measure(work_dir: str | Path | None = None, *, quick: bool = False, demo: bool = False, seed: int = 0,
            epochs: int | None = None, videos_per_class: int | None = None,
            lr: float | None = None, reuse_fixed: str | None = None) -> dict[str, Any]:
    """Both runs and the figures; `demo` runs the `make demo` recipe and data instead of the small sizes, `seed`
    is both runs' train.seed, and `epochs`, `videos_per_class` and `lr` override the sizes (docs/benchmarks.md
    section 6). `reuse_fixed`: the record (`fixed-<stamp>.json` in the work directory) of an earlier invocation's
    fixed run with the same sizes and seed, to run only the elastic one (the demo recipe's pair takes ~45 min)."""
    from pipeline.bench._cluster import LocalCluster

    sizes = DEMO if demo else QUICK if quick else FULL
    sizes = dataclasses.replace(sizes, **{k: v for k, v in (("epochs", epochs), ("videos_per_class", videos_per_class),
                                                            ("lr", lr)) if v is not None})
    work = Path(work_dir or tempfile.mkdtemp(prefix="eco-bench-elastic-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    storage = work / "runs"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cluster = LocalCluster(work)
    try:
        cluster.start()
        # This process is the driver: it joins our cluster only (token and address explicit), and its runtime_env
        # ships this checkout to the workers (the batch hook lives here).
        # Ray reads the token settings when it is imported: ray is imported only now.
        os.environ.update(cluster.auth_env)
        os.environ["RAY_ADDRESS"] = cluster.address
        import ray

        from pipeline.data.manifest import read_manifest
        from pipeline.training.checkpoint import load_checkpoint

        # The workers' logs stay in the cluster's session logs (<temp dir>/session_*/logs): the driver prints the table.
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False, runtime_env={
            "working_dir": str(ROOT), "excludes": EXCLUDES,
            "env_vars": {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "RAY_ADDRESS": cluster.address}})
        data = (_prepare_demo_data(work / f"demo-data-{sizes.videos_per_class}", sizes) if demo
                else _prepare_data(work / "data", sizes))
        config = functools.partial(_demo_config if demo else _config, seed=seed)
        num_train = read_manifest(str(data), "train").num_rows
        num_val = read_manifest(str(data), "val").num_rows
        steps_per_epoch = -(-num_train // (2 * sizes.batch))

        fixed_cfg = config(data, storage, f"fixed-{stamp}", sizes, "2")
        fixed_events = work / f"fixed-{stamp}.events"
        if reuse_fixed:
            # The fixed run of an earlier invocation with the same sizes and seed (its record, written below).
            record = json.loads(Path(reuse_fixed).read_text())
            if (record["sizes"], record["seed"], record["demo"]) != (dataclasses.asdict(sizes), seed, demo):
                raise ValueError(f"{reuse_fixed}: recorded for other sizes, seed or recipe")
            fixed_events = Path(record["events"])
            fixed, fixed_wall = _Recorded(record["metrics"]), record["wall_s"]
        else:
            log.info("fixed run (2 workers): %d epochs of %d steps", sizes.epochs, steps_per_epoch)
            fixed, fixed_wall = _run(fixed_cfg, fixed_events)
            (work / f"fixed-{stamp}.json").write_text(json.dumps({
                "sizes": dataclasses.asdict(sizes), "seed": seed, "demo": demo, "events": str(fixed_events),
                "wall_s": fixed_wall, "metrics": {k: float(fixed.metrics[k]) for k in ("val_top1", "step")},
            "decode_failures": _dropped(Path(fixed.run_dir) / f"epoch_{sizes.epochs:04d}")}))
        log.info("fixed run done in %.0f s, val top-1 %.1f%%", fixed_wall, 100 * fixed.metrics["val_top1"])

        elastic_cfg = config(data, storage, f"elastic-{stamp}", sizes, "[1, 2]")
        elastic_events = work / f"elastic-{stamp}.events"
        preemptor = _Preemptor(cluster, storage / f"elastic-{stamp}", elastic_events, sizes, steps_per_epoch)
        log.info("elastic run ([1, 2] workers): the worker node leaves in epoch %d", KILL_EPOCH)
        preemptor.start()
        try:
            elastic, elastic_wall = _run(elastic_cfg, elastic_events)
        finally:
            preemptor.done.set()
            preemptor.join(timeout=300)
        if preemptor.error is not None:
            raise RuntimeError(f"the node loss was not staged: {preemptor.error}") from preemptor.error
        final = Path(elastic.run_dir) / f"epoch_{sizes.epochs:04d}"
        history = load_checkpoint(final)["elastic"]
        dropped = _dropped(final)
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        # The workers' logs (decode failures, restarts) outlive the cluster: work/ray-logs.
        cluster.stop(keep_logs=work / "ray-logs")

    fixed_stamps = [t for t, _ in _events(fixed_events)]
    seconds_per_step = statistics.median(b - a for a, b in zip(fixed_stamps, fixed_stamps[1:]))
    stamps = _events(elastic_events)
    # None when the run ended before the group restarted at that size (too short a run for the resize check).
    to_one = min((t for t, w in stamps if w == 1 and t > preemptor.t_loss), default=None)
    to_two = min((t for t, w in stamps if w == 2 and t > preemptor.t_return), default=None)
    # The pause in training: from the last batch of the old group to the first of the new one (the node keeps
    # training while it drains, until the notice's deadline).
    gap_one = to_one and to_one - max(t for t, w in stamps if w == 2 and t < to_one)
    gap_two = to_two and to_two - max(t for t, w in stamps if w == 1 and t < to_two)
    p = float(fixed.metrics["val_top1"])
    notices = _preemption_checkpoints(Path(elastic.run_dir))
    return {
        "setup": {"recipe": "make demo (jobs/configs/synthetic_demo.yaml)" if demo else "small", "seed": seed,
                  "task": f"synthetic direction of motion, {sizes.classes} classes, "
                          f"{'128 px, 32 frames' if demo else '64 px, 16 frames'}",
                  "model": f"ECO-{fixed_cfg.model.variant.capitalize()} {fixed_cfg.model.num_segments} segments at "
                           f"{fixed_cfg.data.crop_size} px", "train_clips": num_train, "val_clips": num_val,
                  "epochs": sizes.epochs, "steps_per_epoch": steps_per_epoch, "global_batch": 2 * sizes.batch,
                  "every_steps": sizes.every_steps, "resize_interval_s": sizes.resize_interval_s,
                  "node_loss_epoch": KILL_EPOCH, "cpus": os.cpu_count()},
        "fixed": {"val_top1": p, "wall_s": fixed_wall, "seconds_per_step": seconds_per_step,
                  "steps": int(fixed.metrics["step"])},
        "elastic": {"val_top1": float(elastic.metrics["val_top1"]), "wall_s": elastic_wall,
                    "steps": int(elastic.metrics["step"]),
                    "loss_to_training_s": to_one and to_one - preemptor.t_loss,
                    "return_to_two_workers_s": to_two and to_two - preemptor.t_return,
                    "pause_at_loss_s": gap_one, "pause_at_return_s": gap_two,
                    "groups": [{k: h[k] for k in ("world", "cause", "step", "steps_redone")} for h in history],
                    "steps_redone": sum(h["steps_redone"] for h in history),
                    "decode_failures": dropped,
                    # The checkpoint written on the drain's notice: its step and seconds after the SIGTERM.
                    "preemption_checkpoints": [{"step": st, "after_sigterm_s": t - preemptor.t_loss}
                                               for st, t in notices]},
        "tolerance": 2 * (2 * p * (1 - p) / num_val) ** 0.5,
    }


def _seconds_row(label: str, seconds: float | None, step: float) -> str:
    if seconds is None:
        return f"{label:34}{'':>12}{'not reached':>15}   (the run ended first: a longer run is needed)"
    return f"{label:34}{'':>12}{seconds:>15.1f}   = {seconds / step:.0f} steps of the fixed run"


def format_results(res: dict[str, Any]) -> str:
    s, f, e = res["setup"], res["fixed"], res["elastic"]
    step = f["seconds_per_step"]
    diff = e["val_top1"] - f["val_top1"]
    within = abs(diff) <= res["tolerance"]
    redone = ", ".join(f"{g['steps_redone']} at the {g['cause'].split(' (')[0]}" for g in e["groups"][1:])
    return "\n".join([
        f"elastic training on a 2-node local cluster, {s.get('recipe', 'small')} recipe, seed {s.get('seed', 0)}: "
        f"{s['model']}, {s['train_clips']} training / {s['val_clips']} "
        f"validation clips, {s['epochs']} epochs x {s['steps_per_epoch']} steps (global batch {s['global_batch']}), "
        f"checkpoint every {s['every_steps']} steps, resize check every {s['resize_interval_s']:g} s",
        f"{'':34}{'fixed [2]':>12}{'elastic [1,2]':>15}   vs fixed (baseline)",
        f"{'  val top-1':34}{f['val_top1']:>12.1%}{e['val_top1']:>15.1%}   {diff:+.1%}  (tolerance "
        f"+-{res['tolerance']:.1%}: {'within' if within else 'OUTSIDE'})",
        f"{'  run wall time (s)':34}{f['wall_s']:>12.0f}{e['wall_s']:>15.0f}   x{e['wall_s'] / f['wall_s']:.2f}",
        f"{'  optimiser steps':34}{f['steps']:>12d}{e['steps']:>15d}",
        f"{'  seconds per step (2 workers)':34}{step:>12.2f}",
        _seconds_row("  SIGTERM -> 1 worker training (s)", e["loss_to_training_s"], step),
        _seconds_row("  node return -> 2 workers (s)", e["return_to_two_workers_s"], step),
        _seconds_row("  training paused at the loss (s)", e["pause_at_loss_s"], step),
        _seconds_row("  training paused at the return (s)", e["pause_at_return_s"], step),
        f"{'  steps redone':34}{0:>12d}{e['steps_redone']:>15d}   ({redone})",
        "  worker groups: " + " -> ".join(f"{g['world']} (from step {g['step']})" for g in e["groups"]),
        f"{'  clips dropped (decode failures)':34}{'':>12}{sum(e.get('decode_failures', {}).values()):>15d}   "
        + (", ".join(f"{r} {n}" for r, n in e.get("decode_failures", {}).items()) or "none"),
        "  checkpoints on the preemption notice: " + (", ".join(
            f"step {c['step']}, {c['after_sigterm_s']:.0f} s after the SIGTERM" for c in e["preemption_checkpoints"])
            or "none recorded"),
    ])


def run(args: argparse.Namespace) -> int:
    out = getattr(args, "out", None)
    res = measure(Path(out) / "work" if out else None, quick=bool(getattr(args, "quick", False)),
                  demo=bool(getattr(args, "demo", False)), seed=getattr(args, "seed", None) or 0,
                  reuse_fixed=getattr(args, "reuse_fixed", None),
                  epochs=getattr(args, "epochs", None), videos_per_class=getattr(args, "videos_per_class", None),
                  lr=getattr(args, "lr", None))
    print(format_results(res))
    if out:
        write_results(out, "elastic", res)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--demo", action="store_true",
                   help="the make demo recipe and data (~98%% top-1; ~30 min per pair of runs on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="train.seed of both runs")
    p.add_argument("--reuse-fixed", default=None, metavar="JSON",
                   help="the fixed run's record from an earlier invocation (same sizes and seed): run only the elastic one")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of both runs (default {FULL.epochs})")
    p.add_argument("--videos-per-class", type=int, default=None,
                   help=f"synthetic videos per class, half of them for validation (default {FULL.videos_per_class})")
    p.add_argument("--lr", type=float, default=None, help=f"peak lr for the global batch of 8 (default {FULL.lr})")
    sys.exit(run(p.parse_args()))
