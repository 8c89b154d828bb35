"""A sweep's results: one summary row per trial from its reported epochs (`summarize_trial`), summary.parquet,
the validation top-1 plot, and `SweepResult` (what `eco sweep` prints). Pure but for the files they write."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.parquet"
PLOT_FILE = "val_top1.png"


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
        label = f"{t.trial}  " + ", ".join(f"{k}={format_value(v)}" for k, v in sorted(t.overrides.items()))
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


def format_value(value: Any) -> str:
    """A searched value as the summary lines and the plot's legend show it (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass
class SweepResult:
    """What `run_sweep` returns: the sweep's trials, where its summary and plot are, and its best trial."""

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
            over = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(t.overrides.items()))
            top1 = f"{t.best_val_top1:6.1%}" if not math.isnan(t.best_val_top1) else "   n/a"
            lines.append(f"  {t.trial}  {over:<32}  best val top-1 {top1}  epochs {t.epochs_run:>3}  {t.status}")
        if self.best is not None:
            lines.append(f"  best: {self.best.trial} ({self.metric} {self.best.best_metric:.4g})  "
                         f"run {self.best.run_dir}")
        lines.append(f"  summary {self.summary_path}")
        lines.append(f"  plot    {self.plot_path}")
        return "\n".join(lines)
