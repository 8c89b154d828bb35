"""A real two-node local Ray cluster (`ray start --head` + a second `ray start --address`, each with its own
resources), token authentication configured explicitly, and the training job submitted with
`ray job submit --working-dir .`: the job succeeds, its two training workers ran on different nodes, and the
checkpoint and the W&B offline run exist."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.bench._cluster import RAY, LocalCluster
from pipeline.bench._cluster import free_ports as _free_ports  # noqa: F401 (test_cluster_elastic imports them)
from pipeline.bench._cluster import node_ports as _node_ports  # noqa: F401
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.tracking import find_offline_runs, read_offline_run
from train_helpers import tiny_config, tiny_dataset

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
# Keep the upload small: the job needs pipeline/ and jobs/ only (Ray also honours .gitignore). Top-level folders
# are anchored with "/": a bare "data" would also drop pipeline/data.
EXCLUDES = [".git", ".venv", "/outputs", "/data", "/tests", "/docs", "/benchmarks", ".ci", "*.egg-info", "wandb",
            "__pycache__", ".pytest_cache"]


@pytest.fixture(scope="module")
def tiny_data(ray_session, tmp_path_factory):
    return tiny_dataset(tmp_path_factory)


def test_job_submit_on_two_node_cluster(tiny_data, tmp_path):
    storage = tmp_path / "runs"
    cfg = tiny_config(tiny_data, storage, "tiny-cluster", "scaling.resources_per_worker={trainer_slot: 1}",
                      "data.decode_cpus=0.5", "checkpoint.max_failures=1")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(cfg.to_dict()))

    cluster = LocalCluster(tmp_path)
    try:
        cluster.start()
        nodes = cluster.node_ids()
        assert len(nodes) == 2
        submission = f"eco-train-{secrets.token_hex(3)}"
        runtime_env = {"excludes": EXCLUDES, "env_vars": {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}}
        submit = subprocess.run(
            [RAY, "job", "submit", f"--address={cluster.dashboard}", f"--submission-id={submission}",
             f"--working-dir={ROOT}", f"--runtime-env-json={json.dumps(runtime_env)}", "--",
             sys.executable, "jobs/train.py", "--config", str(recipe)],
            env=cluster.env, capture_output=True, text=True, timeout=900)
        logs = submit.stdout + submit.stderr
        status = subprocess.run([RAY, "job", "status", f"--address={cluster.dashboard}", submission],
                                env=cluster.env, capture_output=True, text=True, timeout=120)
        assert "succeeded" in (status.stdout + status.stderr).lower(), logs[-5000:]
        assert "epoch   1/1" in logs  # the per-epoch line reached the job's logs
    finally:
        cluster.stop()

    run_dir = storage / "tiny-cluster"
    state = load_checkpoint(run_dir / "epoch_0001")
    assert (state["epoch"], state["step"]) == (1, 3)
    workers = json.loads((run_dir / "epoch_0001" / "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == nodes, "one training worker on each node"
    runs = find_offline_runs(run_dir)
    assert len(runs) == 1 and read_offline_run(runs[0]).values("epoch/step") == [3]
