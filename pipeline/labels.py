"""Class names shipped with the package."""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources


@functools.lru_cache(maxsize=1)
def _kinetics400() -> tuple[str, ...]:
    source = resources.files("pipeline") / "resources" / "kinetics400_labels.csv"
    rows = list(csv.DictReader(io.StringIO(source.read_text(encoding="utf-8"))))
    try:
        by_id = {int(row["label_id"]): row["class_label"] for row in rows}
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"{source}: expected columns class_label,label_id with integer ids") from e
    if sorted(by_id) != list(range(1, 401)) or len(rows) != 400:
        raise RuntimeError(f"{source}: expected 400 classes with label_id 1..400, got {len(rows)} rows")
    return tuple(by_id[i] for i in range(1, 401))


def kinetics400_labels() -> list[str]:
    """The 400 Kinetics-400 class names in the order of the official checkpoints' outputs (index = label_id - 1)."""
    return list(_kinetics400())
