"""The ECO model family (ECO-Lite, ECO-Full) and its checkpoints. See docs/model.md."""

from pipeline.model.eco import BUILDERS, ECO, VARIANTS, eco_full, eco_lite
from pipeline.model.weights import (
    CheckpointError,
    InitReport,
    LoadReport,
    load_init_weights,
    load_weights,
    official_to_project,
    project_to_official,
    read_checkpoint,
)

__all__ = [
    "BUILDERS",
    "ECO",
    "VARIANTS",
    "CheckpointError",
    "InitReport",
    "LoadReport",
    "eco_full",
    "eco_lite",
    "load_init_weights",
    "load_weights",
    "official_to_project",
    "project_to_official",
    "read_checkpoint",
]
