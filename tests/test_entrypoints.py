"""Every entrypoint as users run it (issue 11): a one-node Ray cluster started with `ray start --head` and token
authentication, the jobs submitted with `ray job submit --working-dir .`, and a local `eco` command beside the
running cluster.

- jobs/train.py trains (2 Ray Train workers, one epoch): the job succeeds, its per-epoch line is in the job's log,
  and the checkpoint and the W&B offline run land where the recipe said (absolute paths);
- jobs/train.py with a relative `checkpoint.storage_path` is refused before any work, naming the key;
- jobs/predict.py --manifest and jobs/evaluate.py on that checkpoint succeed and write where they were asked;
- `eco predict --manifest` from a shell joins the running cluster (found through Ray's bootstrap file, without
  resource arguments) and succeeds.

A training job across two nodes is tests/test_cluster_elastic.py's; training itself is tests/test_train.py's.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.manifest import read_manifest
from pipeline.inference.batch import read_predictions
from pipeline.training.checkpoint import load_checkpoint
from cluster_helpers import EXCLUDES, RAY, ROOT, LocalCluster, node_ports
from tests.wandb_offline import find_offline_runs, read_offline_run
from train_helpers import TINY_VAL, tiny_config, tiny_dataset

# ~50 s of cluster start-up here; the submitted jobs run under their own 900 s limits.
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1200)]


class HeadNode(LocalCluster):
    """A one-node cluster whose Ray temp dir is `<base>/ray`: with RAY_TMPDIR=<base>, a local `eco` command finds
    it through Ray's bootstrap file (`<base>/ray/ray_current_cluster`), exactly as it finds a `ray start --head`
    cluster in /tmp/ray, without touching other Ray instances on the machine."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.base = self.temp_dir
        self.temp_dir = self.base / "ray"

    def start(self) -> None:
        self.spawn("head", [RAY, "start", "--head", "--block", "--disable-usage-stats",
                             f"--object-store-memory={200 * 2**20}", f"--port={self.gcs_port}",
                             "--node-ip-address=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                             "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                             f"--ray-client-server-port={self.client_port}", f"--temp-dir={self.temp_dir}",
                             "--num-cpus=6", *node_ports(self.ports[0])])
        self.wait_for_nodes(1)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import ray

    data = tiny_dataset(tmp_path_factory)
    if ray.is_initialized():  # the dataset's probe may have started a local instance: free its CPUs
        ray.shutdown()
    work = tmp_path_factory.mktemp("entry")
    cfg = tiny_config(data, work / "runs", "tiny-entry")
    recipe = work / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(cfg.to_dict()))

    cluster = HeadNode(work)
    try:
        cluster.start()
        # The checkpoint every other entrypoint uses comes from the training job itself.
        trained = _submit(cluster, "jobs/train.py", "--config", str(recipe))
        yield {"data": data, "work": work, "recipe": recipe, "cluster": cluster, "trained": trained,
               "run_dir": work / "runs" / "tiny-entry", "checkpoint": work / "runs" / "tiny-entry" / "epoch_0001"}
    finally:
        cluster.stop()


def _submit(cluster: LocalCluster, *args: str) -> tuple[str, str]:
    """`ray job submit --working-dir <repo> -- python <args>`: (final status, logs)."""
    submission = f"eco-{secrets.token_hex(3)}"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                                      "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}
    submit = subprocess.run(
        [RAY, "job", "submit", f"--address={cluster.dashboard}", f"--submission-id={submission}",
         f"--working-dir={ROOT}", f"--runtime-env-json={json.dumps(runtime_env)}", "--", sys.executable, *args],
        env=cluster.env, capture_output=True, text=True, timeout=900)
    status = subprocess.run([RAY, "job", "status", f"--address={cluster.dashboard}", submission],
                            env=cluster.env, capture_output=True, text=True, timeout=120)
    text = (status.stdout + status.stderr).lower()
    state = next((s for s in ("succeeded", "failed", "stopped") if s in text), text)
    return state, submit.stdout + submit.stderr


def test_train_job_writes_its_checkpoint_and_wandb_run_where_asked(setup):
    state, logs = setup["trained"]
    assert state == "succeeded", logs[-5000:]
    assert "epoch   1/1" in logs  # the per-epoch line reached the job's log
    assert "Ray: joined the cluster" in logs  # the job's driver joined the cluster, not a private instance
    saved = load_checkpoint(setup["checkpoint"])
    assert (saved["epoch"], saved["step"]) == (1, 3)
    assert [w["rank"] for w in json.loads((setup["checkpoint"] / "workers.json").read_text())] == [0, 1]
    runs = find_offline_runs(setup["run_dir"])
    assert len(runs) == 1 and read_offline_run(runs[0]).values("epoch/step") == [3]


def test_train_job_refuses_a_relative_storage_path_by_name(setup):
    state, logs = _submit(setup["cluster"], "jobs/train.py", "--config", str(setup["recipe"]),
                          "--set", "checkpoint.storage_path=outputs/runs")
    assert state == "failed", logs[-3000:]
    assert "checkpoint.storage_path='outputs/runs': relative path inside a Ray job" in logs, logs[-3000:]
    assert "_ray_pkg_" in logs  # the message shows where it would have landed
    assert "epoch" not in logs.split("relative path inside a Ray job")[0].lower()  # refused before any work


def test_predict_job_over_a_manifest_directory(setup):
    out = setup["work"] / "predictions-job"
    state, logs = _submit(setup["cluster"], "jobs/predict.py", "--manifest", str(setup["data"]),
                          "--checkpoint", str(setup["checkpoint"]), "--out", str(out), "--actors", "1")
    assert state == "succeeded", logs[-5000:]
    assert "Ray: joined the cluster" in logs
    expected = sorted(read_manifest(setup["data"]).column("video_id").to_pylist())
    assert sorted(read_predictions(out).column("video_id").to_pylist()) == expected


def test_evaluate_job_writes_where_asked(setup):
    out = setup["work"] / "eval-job"
    state, logs = _submit(setup["cluster"], "jobs/evaluate.py", "--checkpoint", str(setup["checkpoint"]),
                          "--manifest", str(setup["data"]), "--out", str(out))
    assert state == "succeeded", logs[-5000:]
    report = json.loads((out / "report.json").read_text())
    assert report["videos"] == TINY_VAL and report["out_dir"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "predictions.parquet", "report.json"]


def test_local_predict_beside_the_running_cluster(setup):
    cluster = setup["cluster"]
    out = setup["work"] / "predictions-local"
    env = {**cluster.env, "RAY_TMPDIR": str(cluster.base), "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", "--manifest", str(setup["data"]),
                          "--checkpoint", str(setup["checkpoint"]), "--out", str(out), "--actors", "1"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-5000:]
    # Joined the cluster named by the bootstrap file, without resource arguments (Ray refuses them there).
    joined = [line for line in logs.splitlines() if "Ray: joined the cluster at" in line]
    assert len(joined) == 1 and f":{cluster.gcs_port} (running cluster named by " in joined[0], logs[-3000:]
    assert "num_cpus and num_gpus must not be provided" not in logs
    assert read_predictions(out).num_rows == read_manifest(setup["data"]).num_rows
