"""Inference: `eco predict` on files, batch inference over manifests with Ray Data, and ECO's online mode.

Imports are lazy (PEP 562) so that `import pipeline.inference` pulls in neither torch nor Ray:
- `Predictor`, `Result`, `Preprocessing`, `read_checkpoint_info`, `predict_main`  (pipeline.inference.predictor)
- `batch_predict`, `read_predictions`, `BatchSummary`, `batch_main`                (pipeline.inference.batch)
- `online_predict`, `run_online`, `OnlineStream`, `WorkingMemory`, `OnlineResult`, `write_outputs`, `online_main`
  (pipeline.inference.online)
See docs/inference.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Predictor": "predictor",
    "Result": "predictor",
    "Preprocessing": "predictor",
    "OFFICIAL_PREPROCESSING": "predictor",
    "read_checkpoint_info": "predictor",
    "predict_main": "predictor",
    "batch_predict": "batch",
    "read_predictions": "batch",
    "BatchSummary": "batch",
    "batch_main": "batch",
    "online_predict": "online",
    "run_online": "online",
    "OnlineStream": "online",
    "WorkingMemory": "online",
    "OnlineResult": "online",
    "write_outputs": "online",
    "online_main": "online",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.inference.{_EXPORTS[name]}"), name)
