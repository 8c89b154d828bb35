"""Sweeps: SPACE.yaml validation and the resource check (pure, milliseconds), then one real Ray Tune sweep of 3
Ray Train runs on the local Ray instance, with ASHA, read back through Tune, the summary Parquet, the W&B offline
runs and a resubmission that resumes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_config
from pipeline.training.sweep import (PLOT_FILE, RUNS_DIR, SUMMARY_FILE, TRIAL_DRIVER_CPUS, SweepError, check_fits,
                                     load_space, parse_space, summarize_trial, trial_demand)
from processes import process_name
from train_helpers import tiny_config, tiny_dataset

RECIPE = load_config(None, ["train.epochs=4", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
                            "data.decode_workers=1", "data.decode_cpus=0.5"])


def _space(**extra):
    return {"metric": "val_top1", "mode": "max", "num_trials": 4, "concurrency": 2,
            "space": {"optim.lr": {"loguniform": [0.001, 0.1]}}, **extra}


# --- SPACE.yaml -------------------------------------------------------------------------------------------------


def test_space_parses_every_kind_into_a_typed_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(sort_keys=False, data={
        "recipe": {"command": "prose, ignored"},
        "metric": "val_loss", "mode": "min", "num_trials": 4, "concurrency": 2, "seed": 3,
        "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 3},
        "space": {"optim.lr": {"loguniform": [1e-3, 1e-1]}, "model.dropout": {"uniform": [0.2, 0.6]},
                  "train.batch_size": {"grid": [2, 4]}, "data.multiscale_crop": {"choice": [True, False]}},
    }))
    space = load_space(path, RECIPE)
    assert (space.metric, space.mode, space.num_trials, space.concurrency, space.seed) == ("val_loss", "min", 4, 2, 3)
    assert (space.scheduler, space.grace_period, space.reduction_factor) == ("asha", 2, 3.0)
    assert [(p.key, p.kind, p.values) for p in space.params] == [
        ("optim.lr", "loguniform", (1e-3, 1e-1)), ("model.dropout", "uniform", (0.2, 0.6)),
        ("train.batch_size", "grid", (2, 4)), ("data.multiscale_crop", "choice", (True, False))]
    assert space.grid_size == 2
    with pytest.raises(AttributeError):
        space.metric = "val_top1"  # frozen


@pytest.mark.parametrize("change, message", [
    ({"space": {"optim.learning_rate": {"choice": [0.1]}}}, "space.optim.learning_rate: unknown config key; "
                                                            "valid: optim.lr, optim.base_batch_size"),
    ({"space": {"optimiser.lr": {"choice": [0.1]}}}, "space.optimiser.lr: unknown config key; valid: model, data"),
    ({"space": {"optim.lr": {"normal": [0, 1]}}}, "space.optim.lr: expected one of"),
    ({"space": {"optim.lr": {"loguniform": [0.0, 0.1]}}}, "must be > 0 for a log scale"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.01]}}}, "space.optim.lr.uniform: low 0.1 must be < high 0.01"),
    ({"space": {"train.batch_size": {"choice": [2, "big"]}}}, "space.train.batch_size.choice: 'big'"),
    ({"space": {"scaling.num_workers": {"choice": [1, 2]}}}, "space.scaling.num_workers: scaling.* is set by"),
    ({"space": {"train.epochs": {"choice": [2, 3]}}}, "space.train.epochs"),
    ({"mode": "maximise"}, "mode: expected max or min"),
    ({"num_trials": 3, "space": {"optim.lr": {"grid": [0.1, 0.01]}}}, "num_trials: must be a multiple of the grid"),
    ({"concurrency": 0}, "concurrency: must be >= 1"),
    ({"concurrency": "two"}, "concurrency: expected int"),
    ({"scheduler": {"name": "pbt"}}, "scheduler.name: expected asha or fifo"),
    ({"scheduler": {"name": "asha", "grace_period": 9}}, "scheduler.grace_period: must be between 1 and"),
    ({"scheduler": {"name": "asha", "patience": 2}}, "scheduler: unknown key(s) patience"),
    ({"trials": 4}, "unknown key(s) trials"),
])
def test_space_errors_name_the_key(change, message):
    with pytest.raises(SweepError, match=None) as info:
        parse_space(_space(**change), RECIPE)
    assert message in str(info.value)


def test_asha_on_a_val_metric_needs_evaluation_every_epoch():
    with pytest.raises(SweepError, match="set train.eval_every_epochs=1"):
        parse_space(_space(), RECIPE.replace({"train.eval_every_epochs": 2}))
    parse_space(_space(scheduler="fifo"), RECIPE.replace({"train.eval_every_epochs": 2}))


def test_missing_space_file_names_it(tmp_path):
    with pytest.raises(SweepError, match="nope.yaml does not exist"):
        load_space(tmp_path / "nope.yaml", RECIPE)


# --- resources --------------------------------------------------------------------------------------------------


def test_trial_demand_counts_workers_and_both_decode_stages():
    # The trial's driver (a token CPU), 2 workers x 1 CPU, train and validation decode stages of 1 x 0.5 CPU.
    assert trial_demand(RECIPE) == {"CPU": pytest.approx(TRIAL_DRIVER_CPUS + 2 * 1 + 2 * 1 * 0.5)}
    gpu = RECIPE.replace({"scaling.use_gpu": True, "scaling.resources_per_worker": {"gpu_node": 0.01}})
    assert trial_demand(gpu) == {"CPU": pytest.approx(3.01), "GPU": 2.0, "gpu_node": 0.02}


def test_concurrency_that_does_not_fit_is_refused_before_starting():
    check_fits(RECIPE, 2, {"CPU": 7.0})
    with pytest.raises(SweepError) as info:
        check_fits(RECIPE, 3, {"CPU": 7.0})
    assert "CPU: 3 x 3.01 = 9.03 needed, the cluster has 7" in str(info.value)
    assert "Lower concurrency to 2" in str(info.value)
    with pytest.raises(SweepError, match="GPU: 2 x 2 = 4 needed, the cluster has 2"):
        check_fits(RECIPE.replace({"scaling.use_gpu": True}), 2, {"CPU": 64.0, "GPU": 2.0})


def test_summarize_trial_best_epochs_and_stopped_early():
    rows = [{"epoch": 1, "val_top1": 0.25, "val_loss": 1.4}, {"epoch": 2, "val_top1": 0.75, "val_loss": 1.1},
            {"epoch": 3, "val_top1": 0.5, "val_loss": 1.2}]
    t = summarize_trial("t1", {"optim.lr": 0.01}, rows, metric="val_loss", mode="min", epochs=4, error=None,
                        run_dir="r")
    assert (t.best_val_top1, t.best_metric, t.epochs_run, t.stopped_early, t.status) == (0.75, 1.1, 3, True,
                                                                                          "stopped")
    assert t.history == [(1, 0.25), (2, 0.75), (3, 0.5)]
    done = summarize_trial("t2", {}, rows, metric="val_top1", mode="max", epochs=3, error=None, run_dir="r")
    assert (done.stopped_early, done.status, done.best_metric) == (False, "completed", 0.75)
    failed = summarize_trial("t3", {}, rows[:1], metric="val_top1", mode="max", epochs=3, error="boom", run_dir="r")
    assert (failed.stopped_early, failed.status) == (False, "error")


# --- a real sweep: Ray Tune over Ray Train ------------------------------------------------------------------------

# The diverging learning rate last: Tune's grid starts trials in order, 2 at a time, so lr 10 (clipped at norm 40,
# val loss ~1e20+ after one epoch) starts only after a trial has ended, so at least one finite val loss is recorded
# at ASHA's first rung (epoch 1); lr 10 is below the rung's cutoff there and stopped, whatever order the good ones
# finished in. Three trials, not more: each is a whole Ray Train run, the costliest part of the suite. val_loss rather than val_top1: on 4 validation clips after 1 epoch trials may tie at chance top-1, and ASHA
# stops only strictly worse trials. The first trial to reach the rung is never stopped (nothing to compare with),
# so at least one trial runs every epoch.
LRS = [0.01, 0.001, 10.0]
EPOCHS = 2


@pytest.fixture(scope="module")
def sweep_ray():
    """5 logical CPUs (conftest's ray_session then joins this instance and shuts it down after the module): 2
    trials x (2 workers x 0.5 + 2 decode stages x 0.5 + the trial driver's 0.01) = 4.02 CPUs."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=5, object_store_memory=300 * 2**20, include_dashboard=False, logging_level="warning")


@pytest.fixture(scope="module")
def tiny_data(sweep_ray, ray_session, tmp_path_factory):
    return tiny_dataset(tmp_path_factory)


@pytest.mark.slow
def test_sweep_asha_over_ray_train_then_resume(tiny_data, tmp_path):
    from pipeline.training.sweep import run_sweep
    from tests.wandb_offline import find_offline_runs, sealed_offline_runs

    # One worker per trial (test_train covers 2-rank DDP): a trial holds 0.01 + 1 + 2 x 0.5 CPUs, 2 trials fit in 5.
    # max_failures=1: a worker that the node's memory monitor kills (a busy shared CI machine) restarts from the
    # trial's latest checkpoint instead of failing the trial.
    cfg = tiny_config(tiny_data, tmp_path / "runs", "unused", f"train.epochs={EPOCHS}", "scaling.num_workers=1",
                      "data.decode_cpus=0.5", "wandb.log_sample_clips=0", "checkpoint.max_failures=1")
    space = parse_space({"metric": "val_loss", "mode": "min", "num_trials": len(LRS), "concurrency": 2,
                         "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
                         "space": {"optim.lr": {"grid": LRS}}}, cfg)
    result = run_sweep(cfg, space, "lr-sweep")
    sweep = Path(result.path)
    assert sweep == tmp_path / "runs" / "lr-sweep"

    # --- every trial ran through Ray Train and reported each epoch to Tune ---------------------------------------
    assert sorted(t.overrides["optim.lr"] for t in result.trials) == sorted(LRS)
    for t in result.trials:
        assert t.status in ("completed", "stopped") and t.history, t
        assert [e for e, _ in t.history] == list(range(1, t.epochs_run + 1))
        checkpoints = sorted(p.name for p in Path(t.run_dir).glob("epoch_*"))  # loop.py names them epoch_NNNN
        assert checkpoints, f"no Ray Train checkpoint in {t.run_dir}"
    by_lr = {t.overrides["optim.lr"]: t for t in result.trials}
    # --- ASHA stopped the diverging trial after the grace epoch; at least one ran every epoch -------------------
    assert by_lr[10.0].stopped_early and by_lr[10.0].epochs_run == 1 and by_lr[10.0].status == "stopped"
    assert any(t.epochs_run == EPOCHS and not t.stopped_early for t in result.trials)
    assert all(t.epochs_run == (1 if t.stopped_early else EPOCHS) for t in result.trials)
    # Stopped trials' Train workers exited (the trial's Tune actor owns the Train controller, which owns them):
    # the processes each checkpoint recorded are gone. Actors exit asynchronously: wait for it, do not time it.
    latest = [sorted(Path(t.run_dir).glob("epoch_*"))[-1] for t in result.trials]  # num_to_keep=1 keeps best+latest
    pids = [w["pid"] for checkpoint in latest for w in json.loads((checkpoint / "workers.json").read_text())]
    assert len(pids) == len(LRS)
    _wait_until(lambda: not any(process_name(pid).startswith("ray::") for pid in pids))

    # --- the summary Parquet and the plot ------------------------------------------------------------------------
    table = pq.read_table(sweep / SUMMARY_FILE).to_pylist()
    assert len(table) == len(LRS)
    assert sorted(row["optim.lr"] for row in table) == sorted(LRS)
    assert all(json.loads(row["overrides"]) == {"optim.lr": row["optim.lr"]} for row in table)
    assert {row["optim.lr"]: (row["epochs_run"], row["stopped_early"]) for row in table} == {
        lr: (t.epochs_run, t.stopped_early) for lr, t in by_lr.items()}
    assert all(row["best_val_top1"] == pytest.approx(by_lr[row["optim.lr"]].best_val_top1) for row in table)
    assert (sweep / PLOT_FILE).stat().st_size > 0

    # --- W&B: one W&B run per trial, in the sweep's group, the override in the run's config ------------------------
    # What each trial uploads is its sealed segments (pipeline.training.tracking): every epoch it reported was
    # sealed before the report (ASHA stops a trial at a report), so they hold each of its epochs once. A segment
    # started after the last seal and killed with the trial holds nothing that is uploaded.
    runs = {t.trial: find_offline_runs(sweep / RUNS_DIR / t.trial) for t in result.trials}
    assert all(found for found in runs.values()), runs
    for t in result.trials:
        sealed = sealed_offline_runs(sweep / RUNS_DIR / t.trial)
        assert sealed, t.trial
        assert {(run.group, run.run_id) for run in sealed} == {("lr-sweep", sealed[0].run_id)}
        assert all("sweep:lr-sweep" in run.tags for run in sealed)
        assert sealed[0].config["optim"]["lr"] == t.overrides["optim.lr"]
        assert sealed[0].config["checkpoint"]["run_name"] == t.trial
        epochs = [row["epoch"] for run in sealed for row in run.history if "epoch/step" in row]
        assert epochs == list(range(1, t.epochs_run + 1)), (t.trial, epochs)

    # --- resubmitting the finished sweep reruns nothing -------------------------------------------------------------
    before = {t.trial: sorted(p.name for p in Path(t.run_dir).glob("epoch_*")) for t in result.trials}
    again = run_sweep(cfg, space, "lr-sweep")
    assert again.resumed
    assert [(t.trial, t.epochs_run, t.stopped_early, t.history) for t in again.trials] == [
        (t.trial, t.epochs_run, t.stopped_early, t.history) for t in result.trials]
    assert {t.trial: sorted(p.name for p in Path(t.run_dir).glob("epoch_*")) for t in again.trials} == before
    assert {t: find_offline_runs(sweep / RUNS_DIR / t) for t in runs} == runs
    assert len(pq.read_table(sweep / SUMMARY_FILE)) == len(LRS)

    # A different space under the same name is refused, not silently mixed in.
    other = parse_space({"num_trials": 2, "concurrency": 2, "space": {"optim.lr": {"grid": [0.1, 0.2]}}}, cfg)
    with pytest.raises(SweepError, match="exists with a different space"):
        run_sweep(cfg, other, "lr-sweep")
    assert result.best.overrides["optim.lr"] != 10.0


def _wait_until(condition, limit_s: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition still false"
        time.sleep(0.5)
