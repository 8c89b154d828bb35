"""A real multi-node Ray cluster on this machine, for the cluster tests and `eco bench elastic`.

`ray start --head` plus a second `ray start --address` (each with its own resources and ports), token
authentication configured explicitly, every process ours: stopped by its process group, never with `ray stop`
(which would stop every Ray instance on the machine).
"""

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

RAY = str(Path(sys.executable).with_name("ray"))
# The two nodes' resources: a training-worker slot each (so a 2-worker group spans both nodes), and a marker
# resource per node (decoding can be pinned to the head, so the second node holds only a training worker).
HEAD_RESOURCES = '{"trainer_slot": 1, "head_node": 1}'
WORKER_RESOURCES = '{"trainer_slot": 1, "second_node": 1}'
NODE_CPUS = 3
OBJECT_STORE_BYTES = 200 * 2**20


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that are free now, chosen between Ray's worker ports and the kernel's ephemeral range.

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
    # Above Ray's default worker-port range (10002-19999): a node started with one of those for another component
    # refuses to start ("port ... is used by other components").
    low = 20000
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


def node_ports(ports: list[int]) -> list[str]:
    # Two nodes on one machine: every per-node port must differ from the other node's (and from any other Ray
    # instance's), or the second node's agents fail to bind the defaults.
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [f"{name}={port}" for name, port in zip(names, ports)]


class LocalCluster:
    """A head node and one worker node as `ray start --block` processes we own (`procs`, in start order)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ecoray-", dir="/tmp"))  # short: AF_UNIX paths <= 107 bytes
        self.token = self.workdir / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        # Token authentication, explicitly (Ray 2.60 enables it by default for local clusters): every process
        # of this cluster and every client (ray job submit, ray status, a driver) reads the same token file.
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token)}
        self.env = {**os.environ, **self.auth_env, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port, self.dashboard_port, self.client_port, *ports = free_ports(15)
        self.ports = (ports[:6], ports[6:12])
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        self.spawn("head", [RAY, "start", "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                             "--include-dashboard=true", f"--ray-client-server-port={self.client_port}",
                             f"--temp-dir={self.temp_dir}", f"--num-cpus={NODE_CPUS}",
                             f"--resources={HEAD_RESOURCES}", *node_ports(self.ports[0]), *self._common()])
        self.wait_for_nodes(1)
        self.start_worker("worker", self.ports[1])
        self.wait_for_nodes(2)

    def start_worker(self, name: str, ports: list[int] | None = None) -> subprocess.Popen:
        """Start (or start again, with fresh ports) the worker node; returns its `ray start` process."""
        self.spawn(name, [RAY, "start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                           f"--num-cpus={NODE_CPUS}", f"--resources={WORKER_RESOURCES}",
                           *node_ports(ports or free_ports(6)), *self._common()])
        return self.procs[-1]

    def stop_node(self, proc: subprocess.Popen, timeout_s: float = 120) -> None:
        """Stop one node as Kubernetes stops a pod (a spot reclaim): SIGTERM to its `ray start --block` alone, the
        container's PID 1. Ray then drains the node (the preemption notice, with a deadline 30 s ahead,
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S) and shuts its processes down at the deadline. (SIGTERM to the whole
        process group would also kill the raylet and the workers at once, with no notice.)"""
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of the node outlived its `ray start` (its own process group: start_new_session)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    @staticmethod
    def _common() -> list[str]:
        return ["--block", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}"]

    def spawn(self, name: str, cmd: list[str]) -> None:
        """Run `cmd` (a `ray start ...`) in its own session, logged to `<workdir>/ray-<name>.log`; stopped by stop()."""
        log = open(self.workdir / f"ray-{name}.log", "wb")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        """Until `ray status` shows `n` nodes; a `ray start` that exited, or `timeout_s`, raises."""
        deadline = time.monotonic() + timeout_s
        out = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}: see {self.workdir}/ray-*.log")
            res = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env,
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

    def stop(self, grace_s: float = 5.0, keep_logs: Path | None = None) -> None:
        """Tear the whole cluster down: SIGTERM to every node's process group, SIGKILL to what is left after
        `grace_s`. (On SIGTERM a `ray start --block` drains its node first and waits up to 30 s,
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, for its worker leases to end: 33 s per stop, measured, that a
        disposable cluster need not spend.) `keep_logs`: where to copy the session's logs (every node's, the
        workers' included) before the temporary directory goes."""
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # each node is its own process group (start_new_session): its raylet, GCS and workers too
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        if keep_logs is not None:
            for session in self.temp_dir.glob("session_2*"):
                shutil.copytree(session / "logs", Path(keep_logs), dirs_exist_ok=True,
                                ignore_dangling_symlinks=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
