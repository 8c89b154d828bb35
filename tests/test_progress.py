"""pipeline.progress (the reporter every long command uses) and the training step line (pipeline.training.summary):
the lines themselves, never a time. Pure: no Ray."""

from __future__ import annotations

import io
import logging
import re

import pytest

from pipeline.progress import Progress
from pipeline.training import summary


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]


def test_plain_lines_count_up_to_the_total_when_not_a_terminal(caplog):
    stream = io.StringIO()  # a job log, a pipe: not a terminal
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with Progress(5, desc="predict", unit="videos", stream=stream, every_s=0) as progress:
            for n in (1, 2, 2):
                progress.update(n)
    lines = _progress_lines(caplog)
    counts = [int(re.match(r"predict: (\d+)/5 videos \(\d+%\), +[\d.]+ videos/s, \S+ left$", line).group(1))
              for line in lines]
    assert counts == [1, 3, 5]
    assert lines[-1].startswith("predict: 5/5 videos (100%)")
    assert stream.getvalue() == ""  # no bar, no carriage returns in a log


def test_plain_lines_are_periodic_with_one_at_the_end(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with Progress(1000, desc="probe", unit="videos", stream=io.StringIO(), every_s=3600) as progress:
            for _ in range(1000):
                progress.update()
    assert [line.split(" ", 2)[1] for line in _progress_lines(caplog)] == ["1000/1000"]  # only the final line


def test_unknown_total_says_count_and_rate(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with Progress(None, desc="parts", unit="files", stream=io.StringIO(), every_s=0) as progress:
            progress.update(3)
    assert re.fullmatch(r"parts: 3 files, +[\d.]+ files/s", _progress_lines(caplog)[-1])


def test_a_terminal_gets_a_tqdm_bar_and_no_log_lines(caplog):
    stream = _Terminal()
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with Progress(4, desc="shards", unit="videos", stream=stream, every_s=0) as progress:
            for _ in range(4):
                progress.update()
    assert _progress_lines(caplog) == []
    out = stream.getvalue()
    assert "\r" in out and "shards: 100%" in out and "4/4" in out


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("ECO_PROGRESS_INTERVAL_S", "2.5")
    assert Progress(1, desc="x", stream=io.StringIO()).every_s == 2.5
    monkeypatch.setenv("ECO_PROGRESS_INTERVAL_S", "soon")
    with pytest.raises(ValueError, match="ECO_PROGRESS_INTERVAL_S='soon'"):
        Progress(1, desc="x", stream=io.StringIO())


@pytest.mark.parametrize("step, step_time_s, expected", [
    (1, 2.0, (18.0, 58.0)),    # 9 steps left in the first epoch, 29 in the run
    (10, 2.0, (0.0, 40.0)),    # an epoch just ended: nothing left in it
    (25, 1.0, (5.0, 5.0)),
    (30, 1.0, (0.0, 0.0)),     # the run's last step
])
def test_time_left(step, step_time_s, expected):
    # 10 steps per epoch; the run stops at 30 steps (e.g. train.max_steps); in-epoch time never exceeds the run's.
    assert summary.time_left(step, step_time_s, steps_per_epoch=10, total_steps=30) == expected


def test_step_line():
    m = {"train/step": 12, "train/loss": 1.23456, "train/clips_per_s_rank0": 41.25, "train/data_wait_frac_rank0": 0.07,
         "train/epoch_time_left_s": 65.0, "train/run_time_left_s": 3725.0}
    line = summary.step_line(m, steps_per_epoch=10, total_steps=400, epochs=40)
    assert line == ("step     12/400 (epoch 2/40)  loss 1.2346     41.2 clips/s (rank 0)  data-wait   7%  "
                    "left: epoch 1:05, run 1:02:05")
