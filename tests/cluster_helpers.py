"""What the tests that submit jobs to a local cluster share (the cluster itself is pipeline.bench._cluster, which
`eco bench elastic` uses too)."""

from __future__ import annotations

from pathlib import Path

from pipeline.bench._cluster import RAY, LocalCluster, free_ports, node_ports  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
# Keep the upload small: a job needs pipeline/ and jobs/ only (Ray also honours .gitignore). Top-level folders are
# anchored with "/": a bare "data" would also drop pipeline/data, and the job would silently import another copy
# of it (the venv's editable install).
EXCLUDES = ["/.git", "/.venv", "/outputs", "/data", "/tests", "/docs", "/benchmarks", "/.ci", "*.egg-info", "wandb",
            "__pycache__", ".pytest_cache"]
