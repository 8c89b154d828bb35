"""Progress of the long commands (`eco prepare`, `eco predict --manifest`, `eco evaluate`, ...): one reporter for all.

`Progress(total, desc=..., unit=...)` counts work done against a total and shows count / total, rate and time left:
a tqdm bar when stderr is a terminal, and otherwise (a job log, a pipe, CI) a plain log line at most every
`ECO_PROGRESS_INTERVAL_S` seconds (default 10) and always one at the end, so a log file never holds carriage
returns and never stays silent for long. Both render through tqdm's own `format_meter`, so the figures agree.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)

INTERVAL_ENV = "ECO_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 10.0
# What a plain line says: "probe: 120/4000 videos (3%), 41.2 videos/s, 01:34 left".
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_noinv_fmt}, {remaining} left"


def interval_s() -> float:
    """Seconds between plain progress lines (ECO_PROGRESS_INTERVAL_S; 0 prints every update)."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError as e:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected seconds between progress lines, e.g. 10") from e
    return max(value, 0.0)


class Progress:
    """Work done out of `total`, shown as a bar (terminal) or periodic plain lines (anything else).

    Use as a context manager and call `update(n)` as items finish; `set_total` when the total becomes known late.
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "items", stream: TextIO | None = None,
                 every_s: float | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = interval_s() if every_s is None else every_s
        self._t0 = self._last = time.monotonic()
        self._printed_n = -1
        isatty = getattr(self.stream, "isatty", None)
        self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True,
                        leave=True) if isatty is not None and isatty() else None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total is not None and self.n >= self.total):
            self._line(now)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self._printed_n != self.n:
            self._line(time.monotonic())

    def line(self) -> str:
        """The plain line for the current count."""
        total = self.total if self.total is not None and self.total >= self.n else None
        elapsed = time.monotonic() - self._t0
        fmt = PLAIN_FORMAT if total else "{desc}: {n_fmt} {unit}, {rate_noinv_fmt}"
        return tqdm.format_meter(self.n, total, elapsed, prefix=self.desc, unit=f" {self.unit}",
                                 bar_format=fmt.replace("{unit}", self.unit))

    def _line(self, now: float) -> None:
        self._last, self._printed_n = now, self.n
        log.info("%s", self.line())
