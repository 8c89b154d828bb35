"""Experiment sweeps: Ray Tune over Ray Train runs (`eco sweep --config RECIPE --space SPACE.yaml`).

A sweep is one Tune experiment whose trials are whole Ray Train runs of one recipe, each with a few config keys
overridden. It follows Ray Train V2's Tune integration (docs.ray.io, Train user guide "Hyperparameter Tuning with
Ray Tune"): each trial runs a small driver function that builds the TorchTrainer (`run.train`) and calls `fit()`,
with `ray.tune.integration.ray_train.TuneReportCallback` in the Train RunConfig so every epoch's report reaches
Tune, whose scheduler (ASHA by default) may stop the trial. Stopping a trial ends its Tune actor; the Train
controller it created, the controller's worker group and placement group, and the trial's Ray Data actors are
owned by that actor and go with it, so their CPUs and GPUs return to the cluster for the next trial.

Layout under `<checkpoint.storage_path>/<sweep name>/` (Tune's experiment directory):
  sweep.json        the space and the recipe this sweep started with; a resubmission must match them
  <Tune's experiment state and trial directories>   what `Tuner.restore` resumes from
  runs/<trial id>/  each trial's Ray Train run: its checkpoints and its W&B offline run
  summary.parquet   one row per trial: overrides, best val top-1, epochs run, stopped early or not
  val_top1.png      validation top-1 against epoch for every trial

Re-submitting the same sweep name resumes it: finished trials are kept, unfinished ones restart their Train run
under the same run name, which Ray Train V2 resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config import Config, ConfigError

log = logging.getLogger(__name__)

KINDS = ("choice", "grid", "uniform", "loguniform")
# The sweep owns where each trial writes (checkpoint.*), how it is tracked (wandb.*) and the per-trial resources
# that the concurrency check counts (scaling.*): searching over them would break resume, grouping or that check.
RESERVED_SECTIONS = ("checkpoint", "scaling", "wandb")
SUMMARY_FILE = "summary.parquet"
PLOT_FILE = "val_top1.png"
SPEC_FILE = "sweep.json"
RUNS_DIR = "runs"
# The Tune trial only builds the TorchTrainer and waits on fit(); its workers hold the real resources. Tune needs
# a non-empty request per trial (0 CPUs is refused), so a token fraction, counted in trial_demand.
TRIAL_DRIVER_CPUS = 0.01


class SweepError(ValueError):
    """A sweep space, name or resource request is invalid; the message names the key or the resource."""


@dataclass(frozen=True)
class Param:
    """One searched config key. choice/grid: `values` are the candidates; uniform/loguniform: (low, high)."""

    key: str
    kind: Literal["choice", "grid", "uniform", "loguniform"]
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepSpace:
    """A sweep read from SPACE.yaml (see `load_space`)."""

    params: tuple[Param, ...]
    # Reported by every epoch (pipeline.training.loop); ASHA compares trials on it at each rung.
    metric: str = "val_top1"
    mode: Literal["max", "min"] = "max"
    # Trials in total; with grid keys, a multiple of the grid size (each grid point sampled num_trials/grid times).
    num_trials: int = 1
    # Trials running at once; each asks for the recipe's whole worker group (check_fits).
    concurrency: int = 1
    scheduler: Literal["asha", "fifo"] = "asha"
    # Epochs every trial runs before ASHA may stop it.
    grace_period: int = 1
    # ASHA keeps the best 1/reduction_factor at each rung; 2 (not Tune's default 4) suits sweeps of a few trials.
    reduction_factor: float = 2.0
    # Seeds the random choice/uniform/loguniform draws, so a sweep's trials are reproducible.
    seed: int = 0

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params if p.kind == "grid")

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]


# --- SPACE.yaml: pure parsing and validation --------------------------------------------------------------------


def load_space(path: str | Path, recipe: Config) -> SweepSpace:
    """Read and validate SPACE.yaml against the recipe it will sweep:

        metric: val_top1          # a metric every epoch reports; mode: max | min
        mode: max
        num_trials: 4
        concurrency: 2
        seed: 0
        scheduler: {name: asha, grace_period: 1, reduction_factor: 2}    # or {name: fifo}: no early stopping
        space:
          optim.lr: {loguniform: [0.001, 0.1]}
          model.dropout: {choice: [0.3, 0.5]}
          train.batch_size: {grid: [2, 4]}
          optim.weight_decay: {uniform: [0.0, 0.001]}

    A `recipe:` mapping (command, expected time, findings) is prose and ignored, as in training recipes.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep space {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"sweep space {path} is not valid YAML: {e}") from e
    try:
        return parse_space(data, recipe)
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from e


def parse_space(data: Any, recipe: Config) -> SweepSpace:
    if not isinstance(data, dict):
        raise SweepError(f"expected a mapping, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "recipe"}
    valid = ("metric", "mode", "num_trials", "concurrency", "seed", "scheduler", "space")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise SweepError(f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    raw_space = data.get("space")
    if not isinstance(raw_space, dict) or not raw_space:
        raise SweepError("space: expected a mapping of config keys to {choice|grid|uniform|loguniform: ...}")
    params = tuple(_parse_param(key, spec, recipe) for key, spec in raw_space.items())

    scheduler = data.get("scheduler", {"name": "asha"})
    if isinstance(scheduler, str):
        scheduler = {"name": scheduler}
    if not isinstance(scheduler, dict):
        raise SweepError(f"scheduler: expected a mapping like {{name: asha, grace_period: 1}}, got {scheduler!r}")
    sched_unknown = sorted(set(scheduler) - {"name", "grace_period", "reduction_factor"})
    if sched_unknown:
        raise SweepError(f"scheduler: unknown key(s) {', '.join(sched_unknown)}; "
                         "valid: name, grace_period, reduction_factor")
    grid = math.prod(len(p.values) for p in params if p.kind == "grid")
    space = SweepSpace(
        params=params,
        metric=_typed(data, "metric", str, "val_top1"),
        mode=_typed(data, "mode", str, "max"),
        num_trials=_typed(data, "num_trials", int, grid),
        concurrency=_typed(data, "concurrency", int, 1),
        seed=_typed(data, "seed", int, 0),
        scheduler=_typed(scheduler, "name", str, "asha", where="scheduler.name"),
        grace_period=_typed(scheduler, "grace_period", int, 1, where="scheduler.grace_period"),
        reduction_factor=float(_typed(scheduler, "reduction_factor", (int, float), 2.0,
                                      where="scheduler.reduction_factor")),
    )
    _check(space.mode in ("max", "min"), "mode", f"expected max or min, got {space.mode!r}")
    _check(space.scheduler in ("asha", "fifo"), "scheduler.name", f"expected asha or fifo, got {space.scheduler!r}")
    _check(space.num_trials >= 1, "num_trials", "must be >= 1")
    _check(space.num_trials % grid == 0, "num_trials",
           f"must be a multiple of the grid size {grid} (each grid point runs num_trials/{grid} times)")
    _check(space.concurrency >= 1, "concurrency", "must be >= 1")
    if space.scheduler == "asha":
        epochs = recipe.train.epochs
        _check(1 <= space.grace_period <= epochs, "scheduler.grace_period",
               f"must be between 1 and the recipe's train.epochs ({epochs})")
        _check(space.reduction_factor > 1, "scheduler.reduction_factor", "must be > 1")
        # ASHA compares trials at fixed epochs; an epoch without evaluation reports val_top1 = -1 (loop.py).
        _check(not space.metric.startswith("val_") or recipe.train.eval_every_epochs == 1, "metric",
               f"{space.metric} is compared by ASHA every epoch, but the recipe evaluates every "
               f"{recipe.train.eval_every_epochs} epochs: set train.eval_every_epochs=1")
        _check("train.epochs" not in space.keys, "space.train.epochs",
               "ASHA's horizon is the recipe's train.epochs; set it in the recipe, not the space")
    return space


def _parse_param(key: Any, spec: Any, recipe: Config) -> Param:
    where = f"space.{key}"
    if not isinstance(key, str) or key.count(".") != 1:
        raise SweepError(f"{where}: expected a config key section.name (e.g. optim.lr)")
    section, name = key.split(".")
    known = recipe.to_dict()
    if section not in known or name not in known[section]:
        valid = ", ".join(f"{section}.{k}" for k in known[section]) if section in known else ", ".join(known)
        raise SweepError(f"{where}: unknown config key; valid: {valid}")
    if section in RESERVED_SECTIONS:
        raise SweepError(f"{where}: {section}.* is set by the sweep itself (run names, W&B group, per-trial "
                         f"resources); sweep over model, data, optim or train keys")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SweepError(f"{where}: expected one of {{choice: [...]}}, {{grid: [...]}}, {{uniform: [low, high]}}, "
                         f"{{loguniform: [low, high]}}; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise SweepError(f"{where}.{kind}: expected [low, high] numbers, got {values!r}")
        low, high = float(values[0]), float(values[1])
        _check(low < high, f"{where}.{kind}", f"low {low} must be < high {high}")
        _check(kind == "uniform" or low > 0, f"{where}.{kind}", f"low {low} must be > 0 for a log scale")
        values = [low, high]
    # Every candidate (or both bounds) must be a valid value of the recipe's key: the config's own type checks.
    for value in values:
        try:
            recipe.replace({key: value})
        except ConfigError as e:
            raise SweepError(f"{where}.{kind}: {value!r} is not a valid value: {e}") from e
    return Param(key=key, kind=kind, values=tuple(values))


def _typed(data: dict, key: str, types, default, where: str | None = None):
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise SweepError(f"{where or key}: expected {names}, got {value!r}")
    return value


def _check(ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise SweepError(f"{key}: {expected}")


# --- resources: pure ------------------------------------------------------------------------------------------


def trial_demand(cfg: Config) -> dict[str, float]:
    """Logical resources one trial holds while it trains: the recipe's worker group plus its decode stage (train
    and validation datasets, `data.decode_workers` tasks of `data.decode_cpus` each, as the demo recipe counts).
    The trial's own driver holds TRIAL_DRIVER_CPUS and the Train controller it starts asks for 0 CPUs."""
    s, d = cfg.scaling, cfg.data
    demand: dict[str, float] = {"CPU": TRIAL_DRIVER_CPUS + s.num_workers * s.cpus_per_worker
                                + 2 * d.decode_workers * d.decode_cpus}
    if s.use_gpu:
        demand["GPU"] = float(s.num_workers)
    for name, amount in s.resources_per_worker.items():
        demand[name] = demand.get(name, 0.0) + s.num_workers * amount
    for name, amount in d.decode_resources.items():
        demand[name] = demand.get(name, 0.0) + 2 * d.decode_workers * amount
    return demand


def check_fits(cfg: Config, concurrency: int, cluster: dict[str, float]) -> None:
    """Raise SweepError, before any trial starts, when `concurrency` trials of `cfg` do not fit `cluster`
    (ray.cluster_resources()): Tune would otherwise start some and leave the rest pending without saying why."""
    demand = trial_demand(cfg)
    short = [f"{name}: {concurrency} x {amount:g} = {concurrency * amount:g} needed, the cluster has "
             f"{cluster.get(name, 0.0):g}"
             for name, amount in demand.items() if concurrency * amount > cluster.get(name, 0.0) + 1e-9]
    if short:
        s, d = cfg.scaling, cfg.data
        fit = min((int(cluster.get(n, 0.0) // a) for n, a in demand.items() if a > 0), default=0)
        raise SweepError(
            f"concurrency {concurrency} does not fit the cluster ({'; '.join(short)}). One trial = "
            f"{s.num_workers} workers x {s.cpus_per_worker:g} CPU{' + 1 GPU' if s.use_gpu else ''} + decode "
            f"2 datasets x {d.decode_workers} x {d.decode_cpus:g} CPU. "
            + (f"Lower concurrency to {fit}" if fit >= 1 else "One trial alone does not fit: lower "
               "scaling.num_workers / cpus_per_worker or data.decode_workers / decode_cpus")
            + " or add nodes (a local instance: raise scaling.local_num_cpus).")


# --- results: pure -------------------------------------------------------------------------------------------


@dataclass
class TrialSummary:
    trial: str
    overrides: dict[str, Any]
    epochs_run: int
    best_val_top1: float
    best_metric: float
    stopped_early: bool
    status: str
    run_dir: str
    # (epoch, val_top1) for every evaluated epoch, in order: the plot's line.
    history: list[tuple[int, float]] = field(default_factory=list)


def summarize_trial(trial: str, overrides: dict[str, Any], rows: list[dict[str, Any]], *, metric: str, mode: str,
                    epochs: int, error: str | None, run_dir: str) -> TrialSummary:
    """One trial's row from its reported epochs (`rows`, in order). A trial that ended without error before the
    recipe's `epochs` was stopped by the scheduler."""
    history = [(int(r["epoch"]), float(r["val_top1"])) for r in rows
               if "epoch" in r and r.get("val_top1") is not None and float(r["val_top1"]) >= 0]
    values = [float(r[metric]) for r in rows if r.get(metric) is not None and not math.isnan(float(r[metric]))
              and not (metric == "val_top1" and float(r[metric]) < 0)]
    epochs_run = max((int(r["epoch"]) for r in rows if "epoch" in r), default=0)
    return TrialSummary(
        trial=trial, overrides=overrides, epochs_run=epochs_run,
        best_val_top1=max((v for _, v in history), default=float("nan")),
        best_metric=(max if mode == "max" else min)(values, default=float("nan")),
        stopped_early=error is None and epochs_run < epochs,
        status="error" if error else ("stopped" if epochs_run < epochs else "completed"),
        run_dir=run_dir, history=history,
    )


def write_summary(trials: list[TrialSummary], path: Path, *, metric: str) -> None:
    """summary.parquet: trial, overrides (JSON, plus one column per key), best val top-1, epochs run, stopped
    early, status, the Train run directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = sorted({k for t in trials for k in t.overrides})
    columns: dict[str, Any] = {
        "trial": [t.trial for t in trials],
        "overrides": [json.dumps(t.overrides, sort_keys=True) for t in trials],
    }
    for key in keys:
        values = [t.overrides.get(key) for t in trials]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a choice mixing types: keep each value's JSON text
            columns[key] = pa.array([json.dumps(v) for v in values])
    columns.update({
        "best_val_top1": [t.best_val_top1 for t in trials],
        f"best_{metric}": [t.best_metric for t in trials],
        "epochs_run": pa.array([t.epochs_run for t in trials], pa.int32()),
        "stopped_early": [t.stopped_early for t in trials],
        "status": [t.status for t in trials],
        "run_dir": [t.run_dir for t in trials],
    })
    pq.write_table(pa.table(columns), path)


def plot_trials(trials: list[TrialSummary], path: Path, *, title: str) -> None:
    """Validation top-1 against epoch, one line per trial; stopped trials dashed and ending in a cross."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for t in trials:
        if not t.history:
            continue
        epochs, top1 = zip(*t.history)
        label = f"{t.trial}  " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(t.overrides.items()))
        style = dict(linestyle="--", marker="x") if t.stopped_early else dict(linestyle="-", marker="o")
        ax.plot(epochs, [100 * v for v in top1], label=label + ("  (stopped)" if t.stopped_early else ""),
                **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- running a sweep on Ray Tune -----------------------------------------------------------------------------


@dataclass
class SweepResult:
    name: str
    path: str
    summary_path: str
    plot_path: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    resumed: bool = False

    @property
    def best(self) -> TrialSummary | None:
        scored = [t for t in self.trials if not math.isnan(t.best_metric)]
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.best_metric) if scored else None

    def describe(self) -> str:
        lines = [f"sweep {self.name}: {len(self.trials)} trials{' (resumed)' if self.resumed else ''} in {self.path}"]
        for t in self.trials:
            over = ", ".join(f"{k}={_short(v)}" for k, v in sorted(t.overrides.items()))
            top1 = f"{t.best_val_top1:6.1%}" if not math.isnan(t.best_val_top1) else "   n/a"
            lines.append(f"  {t.trial}  {over:<32}  best val top-1 {top1}  epochs {t.epochs_run:>3}  {t.status}")
        if self.best is not None:
            lines.append(f"  best: {self.best.trial} ({self.metric} {self.best.best_metric:.4g})  "
                         f"run {self.best.run_dir}")
        lines.append(f"  summary {self.summary_path}")
        lines.append(f"  plot    {self.plot_path}")
        return "\n".join(lines)


def sweep_dir(cfg: Config, name: str) -> str:
    """`<checkpoint.storage_path>/<name>`: Tune's experiment directory (absolute for local storage)."""
    storage = cfg.checkpoint.storage_path
    if "://" not in storage:
        storage = str(Path(storage).absolute())
    return f"{storage.rstrip('/')}/{name}"


def run_sweep(cfg: Config, space: SweepSpace, name: str) -> SweepResult:
    """Run (or resume) the sweep `name` of recipe `cfg` over `space`; writes the summary and the plot."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipeline.training import run as train_run

    if not name or "/" in name:
        raise SweepError(f"sweep name {name!r}: expected a non-empty name without '/'")
    cfg = train_run._absolute_paths(cfg)
    path = sweep_dir(cfg, name)
    local = "://" not in path
    train_run._ensure_ray(cfg)
    check_fits(cfg, space.concurrency, ray.cluster_resources())
    _check_spec(path, {"space": asdict(space), "recipe": cfg.to_dict()}, local=local)

    trainable = tune.with_resources(
        _trial_function(cfg.to_dict(), name, f"{path}/{RUNS_DIR}"),
        {"CPU": TRIAL_DRIVER_CPUS})
    resumed = tune.Tuner.can_restore(path)
    if resumed:
        log.info("sweep %s: resuming from %s (finished trials are kept)", name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs, grace_period=space.grace_period,
                                   reduction_factor=space.reduction_factor)
                     if space.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(space),
            tune_config=tune.TuneConfig(
                metric=space.metric, mode=space.mode, scheduler=scheduler,
                num_samples=space.num_trials // space.grid_size,
                search_alg=BasicVariantGenerator(max_concurrent=space.concurrency, random_state=space.seed),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(name=name, storage_path=path.rsplit("/", 1)[0], verbose=0,
                                      callbacks=[_progress_log(name, space.metric)]),
        )
        log.info("sweep %s: %d trials over %s, %d at a time, %s, in %s", name, space.num_trials,
                 ", ".join(space.keys), space.concurrency, space.scheduler, path)
    grid = tuner.fit()

    trials = []
    for result in grid:
        rows = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        overrides = {k: _plain(v) for k, v in (result.config or {}).items()}
        trials.append(summarize_trial(
            trial_id, overrides, rows, metric=space.metric, mode=space.mode, epochs=cfg.train.epochs,
            error=repr(result.error) if result.error else None, run_dir=f"{path}/{RUNS_DIR}/{trial_id}"))
    trials.sort(key=lambda t: t.trial)
    summary_path, plot_path = f"{path}/{SUMMARY_FILE}", f"{path}/{PLOT_FILE}"
    if local:
        write_summary(trials, Path(summary_path), metric=space.metric)
        plot_trials(trials, Path(plot_path), title=f"sweep {name}: validation top-1 per epoch")
    else:
        summary_path, plot_path = _write_remote(trials, path, name, space.metric)
    result = SweepResult(name=name, path=path, summary_path=summary_path, plot_path=plot_path,
                         metric=space.metric, mode=space.mode, trials=trials, resumed=resumed)
    for t in trials:
        if t.status == "error":
            log.warning("sweep %s: trial %s failed; see %s", name, t.trial, t.run_dir)
    return result


def param_space(space: SweepSpace) -> dict[str, Any]:
    """Tune's param_space: flat {"optim.lr": sampler}, applied to the recipe with Config.replace in the trial."""
    from ray import tune

    samplers = {"choice": lambda v: tune.choice(list(v)), "grid": lambda v: tune.grid_search(list(v)),
                "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {p.key: samplers[p.kind](p.values) for p in space.params}


def _trial_function(recipe: dict[str, Any], sweep: str, runs_dir: str):
    """The Tune trial: the recipe with the trial's overrides as one Ray Train run named after the trial id (stable
    across Tuner.restore, so a resumed trial resumes its Train run from its latest checkpoint)."""

    def run_trial(config: dict[str, Any]) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from pipeline.training.run import train

        trial_id = tune.get_context().get_trial_id()
        cfg = Config.from_dict(recipe).replace({
            **{k: _plain(v) for k, v in config.items()},
            "checkpoint.storage_path": runs_dir, "checkpoint.run_name": trial_id,
            "wandb.group": sweep, "wandb.tags": [f"sweep:{sweep}"],
        })
        train(cfg, callbacks=[TuneReportCallback()])

    return run_trial


def _progress_log(sweep: str, metric: str):
    from ray import tune

    class ProgressLog(tune.Callback):
        """The project's own console lines for a sweep (Tune's status tables are off: verbose=0)."""

        def __init__(self, sweep: str, metric: str):
            self.sweep, self.metric = sweep, metric

        def on_trial_start(self, iteration, trials, trial, **info):
            log.info("sweep %s: trial %s started: %s", self.sweep, trial.trial_id, _overrides_text(trial.config))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log.info("sweep %s: trial %s epoch %s  %s %.4g  val top-1 %s", self.sweep, trial.trial_id,
                     result.get("epoch"), self.metric, result.get(self.metric, math.nan),
                     f"{result.get('val_top1', -1):.1%}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            log.info("sweep %s: trial %s ended after %s epochs", self.sweep, trial.trial_id,
                     trial.last_result.get("epoch"))

        def on_trial_error(self, iteration, trials, trial, **info):
            log.warning("sweep %s: trial %s failed: %s", self.sweep, trial.trial_id, trial.error_file)

    return ProgressLog(sweep, metric)


def _overrides_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(_plain(v))}" for k, v in sorted(config.items()))


def _plain(value: Any) -> Any:
    """numpy scalars from Tune's samplers -> Python values (for Config.replace, JSON and Parquet)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _check_spec(path: str, spec: dict[str, Any], *, local: bool) -> None:
    """A resubmitted sweep name must be the same sweep: Tune cannot change a search space on resume."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path) if not local else (pafs.LocalFileSystem(), path)
    target = f"{root}/{SPEC_FILE}"
    text = json.dumps(spec, indent=2, sort_keys=True)
    if fs.get_file_info(target).type == pafs.FileType.File:
        with fs.open_input_stream(target) as f:
            stored = json.loads(f.read().decode())
        if stored != json.loads(text):
            differ = sorted(k for k in ("space", "recipe") if stored.get(k) != spec[k])
            raise SweepError(f"sweep {path} exists with a different {' and '.join(differ)} ({target}); "
                             "resume it with the same recipe and space, or pass another --name")
        return
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(target) as f:
        f.write(text.encode())


def _write_remote(trials: list[TrialSummary], path: str, name: str, metric: str) -> tuple[str, str]:
    """Write the summary and plot locally, then copy them next to the remote sweep."""
    import tempfile

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path)
    with tempfile.TemporaryDirectory() as tmp:
        write_summary(trials, Path(tmp, SUMMARY_FILE), metric=metric)
        plot_trials(trials, Path(tmp, PLOT_FILE), title=f"sweep {name}: validation top-1 per epoch")
        for file in (SUMMARY_FILE, PLOT_FILE):
            with fs.open_output_stream(f"{root}/{file}") as out:
                out.write(Path(tmp, file).read_bytes())
    return f"{path}/{SUMMARY_FILE}", f"{path}/{PLOT_FILE}"

