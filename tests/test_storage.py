"""pipeline.storage (paths and URIs) and the pure parts of pipeline.raystart (the bootstrap file, job detection,
relative paths refused in jobs). No Ray instance: these run in milliseconds, except one subprocess that starts a
local Ray beside a dead cluster's bootstrap file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline import raystart, storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path, expected", [
    ("s3://bucket/key", True), ("gs://b/k", True), ("file:///tmp/x", True), ("hdfs://nn:8020/x", True),
    ("/abs/path", False), ("relative/path", False), ("C://not-a-scheme", False), ("weird:/x", False),
])
def test_is_uri(path, expected):
    assert storage.is_uri(path) is expected


def test_join_keeps_scheme_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert storage.join("s3://bucket/runs/", "demo", "epoch_0002") == "s3://bucket/runs/demo/epoch_0002"
    assert storage.parent("s3://bucket/runs/demo/") == "s3://bucket/runs"
    assert storage.basename("s3://bucket/runs/demo/") == "demo"
    monkeypatch.chdir(tmp_path)
    assert storage.join("out", "a") == str(tmp_path / "out" / "a")
    assert storage.absolute("s3://b/k") == "s3://b/k"


def test_local_and_file_uri_read_write_list(tmp_path):
    for base in (str(tmp_path / "plain"), "file://" + str(tmp_path / "uri")):
        storage.makedirs(storage.join(base, "d"))
        storage.write_text(storage.join(base, "d", "a.json"), '{"x": 1}')
        storage.write_bytes(storage.join(base, "b.bin"), b"\x00\x01")
        assert json.loads(storage.read_text(storage.join(base, "d", "a.json"))) == {"x": 1}
        assert storage.read_bytes(storage.join(base, "b.bin")) == b"\x00\x01"
        assert storage.listdir(base) == ["b.bin", "d"]
        assert storage.is_dir(storage.join(base, "d")) and storage.is_file(storage.join(base, "b.bin"))
        assert not storage.exists(storage.join(base, "missing"))
        with pytest.raises(FileNotFoundError, match="missing"):
            storage.read_bytes(storage.join(base, "missing"))
    # Local writes are atomic: no temporary file left beside the result.
    assert sorted(os.listdir(tmp_path / "plain" / "d")) == ["a.json"]


def test_bad_uri_names_it():
    with pytest.raises(storage.StorageError, match="nosuchscheme://x"):
        storage.resolve("nosuchscheme://x")


def test_storage_runtime_env_forwards_only_set_documented_variables(monkeypatch):
    for k in storage.STORAGE_ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    assert storage.storage_runtime_env() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    assert storage.storage_runtime_env() == {"env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}}
    # The documented list and the forwarded list are the same list.
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert all(k in docs for k in storage.STORAGE_ENV_VARS)


def test_relative_paths_refused_inside_a_job_by_key(monkeypatch, tmp_path):
    paths = {"checkpoint.storage_path": "outputs/runs", "data.manifest": str(tmp_path), "wandb.dir": "",
             "--out": "s3://bucket/preds"}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    raystart.check_job_paths(paths)  # outside a job: relative paths are fine (made absolute by the caller)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor sets for a job's driver
    assert raystart.in_ray_job()
    with pytest.raises(ValueError, match=r"checkpoint.storage_path='outputs/runs': relative path inside a Ray job") as e:
        raystart.check_job_paths(paths)
    assert "data.manifest" not in str(e.value) and "s3://" in str(e.value)  # names only the bad key, says what to use


def test_working_dir_copy_counts_as_a_job(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert raystart.in_ray_job()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def test_dead_cluster_in_bootstrap_file_starts_a_local_instance_with_one_line():
    """A cluster gone without `ray stop` leaves Ray's bootstrap file behind; the policy says so in one line and
    starts a local instance instead of waiting a minute on the dead address."""
    base = Path(tempfile.mkdtemp(prefix="ecot-", dir="/tmp"))  # short: Ray's socket paths must fit AF_UNIX
    try:
        (base / "ray").mkdir()
        dead = f"127.0.0.1:{_dead_port()}"
        (base / "ray" / "ray_current_cluster").write_text(dead)
        env = {**os.environ, "RAY_TMPDIR": str(base), "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
                "from pipeline import raystart; import ray\n"
                "assert raystart.recorded_cluster() == " + repr(dead) + "\n"
                "print('MODE', raystart.ensure_ray(num_cpus=1)); print('CPUS', ray.cluster_resources()['CPU'])\n"
                "ray.shutdown()\n")
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert "MODE local" in res.stdout and "CPUS 1.0" in res.stdout
        lines = [line for line in out.splitlines() if dead in line]
        assert len(lines) == 1 and "is not running" in lines[0] and "ray stop" in lines[0], out[-3000:]
        assert "Failed to connect to GCS" not in out
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
