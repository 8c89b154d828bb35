"""Elastic training on a real two-node local Ray cluster (issue 15): a run with scaling.num_workers [1, 2] starts on
both nodes, loses the second node mid-epoch (its `ray start` is terminated, as a spot reclaim does), continues on
one worker from the last mid-epoch checkpoint, grows back to two workers when the node is started again, and
finishes. It is also the suite's test of a training job submitted with `ray job submit` to a multi-node cluster
with token authentication: the first group has one worker on each node, the per-epoch line reaches the job's log,
and the checkpoints and the W&B offline run land where the job was asked to write them.

Determinism without sleeps as synchronisation: a batch hook (defined in the job's entrypoint) holds the workers of
a group at a known point once that group has written a known checkpoint (`epoch_0001-step_0000002` for the first
group, `epoch_0002-step_0000004` for the one-worker group); the test polls the run directory for those checkpoints
before it stops or starts the node, and Ray Train tears the held group down. So the node leaves after step 3 was
trained but before it was checkpointed (1 step redone), and returns while step 5 is under way.

Tiny data: 12 training clips, 64 px, 4 segments; the global batch is 4 clips at both sizes (2 workers x 2 clips, or
1 worker x 2 clips x 2 accumulated), 3 steps per epoch, 3 epochs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.optim import Schedule, lr_at
from cluster_helpers import EXCLUDES, RAY, ROOT, LocalCluster, free_ports, node_ports
from tests.wandb_offline import sealed_offline_runs
from train_helpers import TINY_TRAIN, tiny_config, tiny_dataset, registered_checkpoints

# ~150 s here; its own waits for the job allow up to 20 minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1800)]

STEPS_PER_EPOCH, EPOCHS = 3, 3
ENTRYPOINT = '''
import functools, json, sys, time
from pathlib import Path

sys.path.insert(0, ".")  # the uploaded working directory (the repository)
from pipeline.config import load_config
from pipeline.training.run import train


def _written(run_dir, name, workers):
    try:
        return len(json.loads((run_dir / name / "workers.json").read_text())) == workers
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def gate(run_dir, batch):
    """Hold this worker group once it has written the checkpoint the test waits for (the group is then torn
    down by Ray Train: node lost, or resized)."""
    import ray.train

    world = ray.train.get_context().get_world_size()
    shrunk = any(_written(run_dir, d.name, 1) for d in run_dir.glob("epoch_*"))
    hold = ((world == 2 and not shrunk and _written(run_dir, "epoch_0001-step_0000002", 2))
            or (world == 1 and _written(run_dir, "epoch_0002-step_0000004", 1)))
    if hold:
        (run_dir.parent / f"held-{world}").touch()  # the test stops or starts the node only then
    deadline = time.monotonic() + 900
    while hold:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {world}-worker group was never torn down")
        time.sleep(0.5)
    return batch


cfg = load_config(sys.argv[1])
result = train(cfg, batch_hook=functools.partial(gate, Path(sys.argv[2])))
print(result.describe())
'''


@pytest.fixture(scope="module")
def tiny_data(ray_session, tmp_path_factory):
    return tiny_dataset(tmp_path_factory)




def _wait_for(path: Path, job: subprocess.Popen, timeout_s: float) -> None:
    """Poll for `path` (a checkpoint's workers.json) and for Ray Train to register that checkpoint, while the
    job runs: only a registered checkpoint is the one a restarted group resumes from."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.parent.name in registered_checkpoints(path.parent.parent)):
        if job.poll() is not None:
            raise AssertionError(f"the job ended ({job.returncode}) before {path} was written")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written in {timeout_s}s")
        time.sleep(0.5)


def _wait_for_file(path: Path, job: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if job.poll() is not None:
            raise AssertionError(f"the job ended ({job.returncode}) before {path} was written")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written in {timeout_s}s")
        time.sleep(0.5)


def test_elastic_run_shrinks_and_grows_back(tiny_data, tmp_path):
    storage = tmp_path / "runs"
    run_dir = storage / "tiny-elastic"
    cfg = tiny_config(tiny_data, storage, "tiny-elastic", "scaling.num_workers=[1, 2]",
                      "scaling.resources_per_worker={trainer_slot: 1}", "scaling.elastic_resize_monitor_interval_s=2",
                      # The controller's first try after the loss may ask for 2 workers on a view of the cluster
                      # that still counts the lost node: 15 s for that, not Ray's 60 s.
                      "scaling.worker_group_start_timeout_s=15",
                      f"train.epochs={EPOCHS}", "checkpoint.every_steps=1", "checkpoint.max_failures=3",
                      "checkpoint.num_to_keep=2",
                      # Decoding on the head node: the node that leaves holds only a training worker.
                      "data.decode_cpus=0.5", "data.decode_resources={head_node: 0.01}")
    recipe = tmp_path / "elastic.yaml"
    recipe.write_text(yaml.safe_dump(cfg.to_dict()))
    entry = tmp_path / "elastic_entry.py"
    entry.write_text(textwrap.dedent(ENTRYPOINT))

    cluster = LocalCluster(tmp_path)
    job = None
    try:
        cluster.start()
        nodes = cluster.node_ids()
        assert len(nodes) == 2
        runtime_env = {"excludes": EXCLUDES, "env_vars": {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}}
        job = subprocess.Popen(
            [RAY, "job", "submit", f"--address={cluster.dashboard}",
             f"--submission-id=eco-elastic-{secrets.token_hex(3)}",
             f"--working-dir={ROOT}", f"--runtime-env-json={json.dumps(runtime_env)}", "--",
             sys.executable, str(entry), str(recipe), str(run_dir)],
            env=cluster.env, stdout=open(tmp_path / "job.log", "wb"), stderr=subprocess.STDOUT)
        # 1. Two workers wrote a mid-epoch checkpoint: the second node leaves (SIGTERM, as on a spot reclaim).
        _wait_for(run_dir / "epoch_0001-step_0000002" / "workers.json", job, 900)
        _wait_for_file(storage / "held-2", job, 900)  # held after training step 3 (not checkpointed)
        # The first group: one training worker on each node (the job was placed across the cluster).
        first = json.loads((run_dir / "epoch_0001-step_0000002" / "workers.json").read_text())
        assert [w["rank"] for w in first] == [0, 1] and {w["node_id"] for w in first} == nodes
        second = cluster.procs[1]
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=120)
        # 2. One worker took over from that checkpoint and wrote its own: the node comes back (fresh ports).
        _wait_for(run_dir / "epoch_0002-step_0000004" / "workers.json", job, 900)
        _wait_for_file(storage / "held-1", job, 900)  # held inside step 5
        cluster.spawn("worker-again", [RAY, "start", f"--address=127.0.0.1:{cluster.gcs_port}",
                                        "--node-ip-address=127.0.0.1", "--num-cpus=3",
                                        '--resources={"trainer_slot": 1, "second_node": 1}',
                                        *node_ports(free_ports(6)), "--block", "--disable-usage-stats",
                                        f"--object-store-memory={200 * 2**20}"])
        # 3. The group grows back to two workers and the run finishes.
        assert job.wait(timeout=1200) == 0, (tmp_path / "job.log").read_text()[-5000:]
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        cluster.stop()
    log_text = (tmp_path / "job.log").read_text()

    final = load_checkpoint(run_dir / f"epoch_{EPOCHS:04d}")
    # The optimiser step count is that of an uninterrupted run: the redone step is not counted twice.
    assert (final["epoch"], final["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    history = final["elastic"]
    assert [h["world"] for h in history] == [2, 1, 2]
    assert [h["cause"] for h in history] == ["start", "shrunk 2->1 (worker lost)", "grown 1->2 (resources returned)"]
    # Each group restarted from the latest checkpoint: step 2 (step 3 was trained, not checkpointed: redone), then 4.
    assert [(h["step"], h["steps_redone"]) for h in history] == [(0, 0), (2, 1), (4, 0)]
    assert "world 2 (restarts 2, steps redone 1)" in log_text  # the per-epoch line
    # scaling.worker_group_start_timeout_s reached Ray Train's controller (it is an environment variable there).
    assert "timed out after 60.0 seconds" not in log_text

    # W&B: the sealed segments (one per checkpoint, sealed before it is reported: pipeline.training.tracking) are
    # one W&B run holding every step once, from every group: a step redone after a lost group is logged by the
    # group that redid it (the lost group's unsealed rows are not uploaded). Every logged step has the lr of the
    # schedule at that step, and the world sizes are those of the groups in turn.
    runs = sealed_offline_runs(run_dir)
    assert len({r.run_id for r in runs}) == 1
    schedule = Schedule(**{**final["schedule"], "milestones": tuple(final["schedule"]["milestones"])})
    logged = [(int(row["train/step"]), row["train/lr"]) for r in runs for row in r.history if "train/lr" in row]
    assert [s for s, _ in logged] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step, lr in logged:
        assert lr == pytest.approx(lr_at(step - 1, schedule), rel=1e-12)
    worlds = [row["elastic/world_size"] for r in runs for row in r.history if "elastic/world_size" in row]
    assert [w for i, w in enumerate(worlds) if i == 0 or worlds[i - 1] != w] == [2, 1, 2]

    # The data position: the one-worker group resumed epoch 1 with the 8 clips two workers had trained in steps
    # 1-2 (positions recorded at the checkpoint), trained the other 4 once, and the regrown group did the same in
    # epoch 2 (4 clips from step 4, 8 more). Per epoch, 3 steps x 4 clips = 12 clip trainings covered 12 distinct
    # rows: no clip of an epoch trained twice or skipped outside the redone step.
    epoch_rows = {}
    for r in runs:
        for row in r.history:
            if "epoch/epoch_rows_trained" in row:
                epoch_rows[int(row["epoch"])] = (int(row["epoch/epoch_rows_trained"]), int(row["epoch/train_count"]))
    assert epoch_rows == {1: (TINY_TRAIN, 4), 2: (TINY_TRAIN, 8), 3: (TINY_TRAIN, TINY_TRAIN)}
