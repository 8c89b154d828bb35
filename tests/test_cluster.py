"""A real two-node local Ray cluster (`ray start --head` + a second `ray start --address`, each with its own
resources), token authentication configured explicitly, and the training job submitted with
`ray job submit --working-dir .`: the job succeeds, its two training workers ran on different nodes, and the
checkpoint and the W&B offline run exist."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.tracking import find_offline_runs, read_offline_run
from train_helpers import tiny_config, tiny_dataset

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# Keep the upload small: the job needs pipeline/ and jobs/ only (Ray also honours .gitignore). Top-level folders
# are anchored with "/": a bare "data" would also drop pipeline/data.
EXCLUDES = [".git", ".venv", "/outputs", "/data", "/tests", "/docs", "/benchmarks", ".ci", "*.egg-info", "wandb",
            "__pycache__", ".pytest_cache"]


@pytest.fixture(scope="module")
def tiny_data(ray_session, tmp_path_factory):
    return tiny_dataset(tmp_path_factory)


def _free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that are free now, chosen BELOW the kernel's ephemeral range.

    The ports go to `ray start` processes, so no socket can be held open for them. Binding port 0 and closing it
    (the usual trick) hands out an ephemeral port that the kernel may give to the very next bind(0) or outgoing
    connection (Ray's own workers make hundreds) before `ray start` binds it. Ports below the ephemeral range are
    never handed out that way: once checked free, only an explicit bind can take one. The start is random per
    call, so two runs on one machine rarely probe the same ports.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    low = 10000
    span = max(ephemeral_low - low, n)
    start = low + int.from_bytes(os.urandom(4), "little") % span
    ports: list[int] = []
    for i in range(span):
        port = low + (start - low + i) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports between {low} and {ephemeral_low}")


def _node_ports(ports: list[int]) -> list[str]:
    # Two nodes on one machine: every per-node port must differ from the other node's (and from the session's
    # Ray instance), or the second node's agents fail to bind the defaults.
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [f"{name}={port}" for name, port in zip(names, ports)]


class LocalCluster:
    """`ray start --block` processes we own: stopped by their process group, never with `ray stop` (which would
    stop every Ray instance on the machine)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ecoray-", dir="/tmp"))  # short: AF_UNIX paths <= 107 bytes
        token = workdir / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # Token authentication, explicitly (Ray 2.60 enables it by default for local clusters): every process
        # of this cluster and every client (ray job submit, ray status) reads the same token file.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port, self.dashboard_port, self.client_port, *node_ports = _free_ports(15)
        self.ports = (node_ports[:6], node_ports[6:12])
        self.procs: list[subprocess.Popen] = []

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        common = ["--block", "--disable-usage-stats", f"--object-store-memory={200 * 2**20}"]
        self._spawn("head", [RAY, "start", "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                             "--include-dashboard=true", f"--ray-client-server-port={self.client_port}",
                             f"--temp-dir={self.temp_dir}", "--num-cpus=3",
                             '--resources={"trainer_slot": 1, "head_node": 1}', *_node_ports(self.ports[0]), *common])
        self._wait_for_nodes(1)
        self._spawn("worker", [RAY, "start", f"--address=127.0.0.1:{self.gcs_port}", "--node-ip-address=127.0.0.1",
                               "--num-cpus=3", '--resources={"trainer_slot": 1, "second_node": 1}',
                               *_node_ports(self.ports[1]), *common])
        self._wait_for_nodes(2)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.workdir / f"ray-{name}.log", "wb")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        out = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}: see {self.workdir}/ray-*.log")
            res = subprocess.run([RAY, "status", f"--address=127.0.0.1:{self.gcs_port}"], env=self.env,
                                 capture_output=True, text=True, timeout=60)
            out = res.stdout
            if res.returncode == 0 and out.count(" node_") >= n:
                return
            time.sleep(2)
        raise TimeoutError(f"the cluster did not reach {n} nodes in {timeout_s}s:\n{out}")

    def node_ids(self) -> set[str]:
        res = subprocess.run([RAY, "list", "nodes", f"--address={self.dashboard}", "--format=json"], env=self.env,
                             capture_output=True, text=True, timeout=120, check=True)
        return {n["node_id"] for n in json.loads(res.stdout) if n["state"] == "ALIVE"}

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        for p in reversed(self.procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


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
