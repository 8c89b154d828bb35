"""What an epoch reports, as pure functions: the metrics dict every rank hands to Ray Train, and rank 0's line.

No Ray, no torch.distributed: the caller passes figures already summed over the ranks.
"""

from __future__ import annotations

from typing import Any


def epoch_metrics(*, epoch: int, step: int, lr: float, train: dict[str, float], timing: dict[str, float],
                  val: dict[str, float] | None, history: list[dict[str, Any]], rows_trained: int,
                  failures: list[dict[str, Any]], decoded: dict[str, int], epoch_time_s: float, best_val_before: float, completed: bool,
                  resumed_from: int | None = None, compiled_graphs: int | None = None) -> dict[str, float]:
    """The metrics of epoch `epoch` (0-based) after optimiser step `step`.

    `val` is None when the epoch was not evaluated: val_top1 is then -1, so keep-best ranks it below every
    evaluated epoch (Ray Train keeps the latest checkpoint whatever its score). `failures` are the run's dropped
    clips so far, `decoded` its decoded clips by kind ("train", "eval"); `completed` is False for an epoch stopped inside (train.max_steps), so a resume runs its other
    rows instead of skipping them.
    """
    m: dict[str, float] = {
        "epoch": epoch + 1, "step": step, "lr": lr, **train, **timing,
        "world_size": float(history[-1]["world"]) if history else 1.0,
        "restarts": float(len(history) - 1),
        "steps_redone_total": float(sum(h["steps_redone"] for h in history)),
        "epoch_rows_trained": float(rows_trained),
    }
    m.update(val if val is not None else {"val_top1": -1.0})
    m["decode_failures"] = float(sum(f["epoch"] == epoch for f in failures))
    m["decode_failures_total"] = float(len(failures))
    # Clips the run's decoders produced so far: a run's decode cost follows its steps (train.max_steps included).
    m["decoded_train_clips_total"] = float(decoded.get("train", 0))
    m["epoch_time_s"] = float(epoch_time_s)
    if compiled_graphs is not None:
        m["compiled_graphs"] = float(compiled_graphs)  # > 0 shows the model really runs compiled
    if resumed_from is not None:
        m["resumed_from_epoch"] = float(resumed_from)
    m["best_val_top1"] = max(best_val_before, m["val_top1"])
    m["epoch_complete"] = float(completed)
    return m


def failure_reasons(failures: list[dict[str, Any]], epoch: int) -> str:
    """"crashed 200, timeout 12": an epoch's dropped clips by reason, most first."""
    counts: dict[str, int] = {}
    for f in failures:
        if f["epoch"] == epoch:
            counts[f["reason"]] = counts.get(f["reason"], 0) + 1
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def epoch_line(epochs: int, m: dict[str, float]) -> str:
    """Rank 0's one line for an epoch's metrics (`epoch_metrics`)."""
    complete, evaluated = bool(m.get("epoch_complete", 1.0)), m.get("val_top1", -1.0) >= 0
    line = (f"epoch {int(m['epoch']):>3}/{epochs}{'' if complete else ' (stopped at train.max_steps)'}  "
            f"step {int(m['step']):>6}  world {int(m.get('world_size', 1))}"
            + (f" (restarts {int(m['restarts'])}, steps redone {int(m.get('steps_redone_total', 0))})"
               if m.get("restarts") else "") + f"  loss {m['train_loss']:.4f}  "
            f"train top1 {m['train_top1']:6.1%}")
    if evaluated:
        line += (f"  | val top1 {m['val_top1']:6.1%}  top5 {m['val_top5']:6.1%}  "
                 f"mean-class {m['val_mean_class_acc']:6.1%}")
    return line + (f"  | lr {m['lr']:.2e}  {m['clips_per_s']:7.1f} clips/s  data-wait {m['data_wait_frac']:4.0%}  "
                   f"decode failures {int(m['decode_failures'])}  {m['epoch_time_s']:.0f}s")


def time_left(step: int, step_time_s: float, *, steps_per_epoch: int, total_steps: int) -> tuple[float, float]:
    """(seconds left in the current epoch, seconds left in the run) at `step_time_s` per optimiser step, after
    `step` steps of a run of `total_steps` with `steps_per_epoch` (an epoch that just ended has 0 left)."""
    in_epoch = (-step) % steps_per_epoch
    in_run = max(total_steps - step, 0)
    return min(in_epoch, in_run) * step_time_s, in_run * step_time_s


def step_line(m: dict[str, float], *, steps_per_epoch: int, total_steps: int, epochs: int) -> str:
    """Rank 0's progress line inside an epoch, from a logging window's metrics (engine.train_steps' `on_log` with
    `train/epoch_time_left_s` and `train/run_time_left_s` added)."""
    step = int(m["train/step"])
    epoch = min((step - 1) // steps_per_epoch + 1, epochs)
    return (f"step {step:>6}/{total_steps} (epoch {epoch}/{epochs})  loss {m['train/loss']:.4f}  "
            f"{m['train/clips_per_s_rank0']:7.1f} clips/s (rank 0)  data-wait {m['train/data_wait_frac_rank0']:4.0%}"
            f"  left: epoch {_duration(m['train/epoch_time_left_s'])}, run {_duration(m['train/run_time_left_s'])}")


def _duration(seconds: float) -> str:
    """3725 -> "1:02:05", 65 -> "1:05"."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
