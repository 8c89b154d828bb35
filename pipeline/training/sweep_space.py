"""A sweep's search space: SPACE.yaml read and validated against the recipe it sweeps (`load_space`,
`parse_space`), and the resources one trial holds, checked against the cluster before any trial starts
(`trial_demand`, `check_fits`). Pure: no Ray, milliseconds to test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.config import Config, ConfigError, read_yaml

KINDS = ("choice", "grid", "uniform", "loguniform")
# The sweep owns where each trial writes (checkpoint.*), how it is tracked (wandb.*) and the per-trial resources
# that the concurrency check counts (scaling.*): searching over them would break resume, grouping or that check.
RESERVED_SECTIONS = ("checkpoint", "scaling", "wandb")
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
    data = read_yaml(path, "sweep space", SweepError)
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
