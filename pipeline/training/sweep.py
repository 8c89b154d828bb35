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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.training.sweep_results import (
    PLOT_FILE,
    SUMMARY_FILE,
    SweepResult,
    TrialSummary,
    format_value,
    plot_trials,
    summarize_trial,
    write_summary,
)
from pipeline.training.sweep_space import (
    KINDS,
    RESERVED_SECTIONS,
    TRIAL_DRIVER_CPUS,
    Param,
    SweepError,
    SweepSpace,
    check_fits,
    load_space,
    parse_space,
    trial_demand,
)

# The sweep's public names, wherever they live: `eco sweep` and the tests import them from here.
__all__ = [
    "KINDS", "PLOT_FILE", "RESERVED_SECTIONS", "RUNS_DIR", "SPEC_FILE", "SUMMARY_FILE", "TRIAL_DRIVER_CPUS", "Param",
    "SweepError", "SweepResult", "SweepSpace", "TrialSummary", "check_fits", "load_space", "param_space",
    "parse_space", "plot_trials", "run_sweep", "summarize_trial", "sweep_dir", "trial_demand", "write_summary",
]

log = logging.getLogger(__name__)

SPEC_FILE = "sweep.json"
RUNS_DIR = "runs"


# --- running a sweep on Ray Tune -----------------------------------------------------------------------------


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
    return ", ".join(f"{k}={format_value(_plain(v))}" for k, v in sorted(config.items()))


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

