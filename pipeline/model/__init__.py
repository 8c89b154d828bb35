"""The ECO model family (ECO-Lite, ECO-Full) and its checkpoints. See docs/model.md."""

from pipeline.model.checkpoint_io import Checkpoint
from pipeline.model.checkpoint_io import read as read_checkpoint
from pipeline.model.eco import BUILDERS, ECO, VARIANTS, eco_full, eco_lite
from pipeline.model.keys import CheckpointError, official_to_project, project_to_official
from pipeline.model.weights import (
    InitReport,
    LoadReport,
    load_init_weights,
    load_weights,
)

__all__ = [
    "BUILDERS",
    "Checkpoint",
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
