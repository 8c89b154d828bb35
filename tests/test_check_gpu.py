"""`eco check gpu` / `make gpu-check` on a machine without CUDA: it says so and exits 0; with `--device cpu` the
same checks (training with channels_last (bf16 and compiled on GPUs), evaluation with sample keeping, checkpoint + predict,
JPEG decoding, and the Ray evaluation / batch inference path) run at a tiny size and pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _eco(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    # RAY_ADDRESS=local: the check's own Ray instance (4 logical CPUs), never a cluster some other process started
    # on this machine (pipeline.raystart would join that one, as users expect).
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_without_cuda_it_says_so_and_exits_0():
    done = _eco("check", "gpu")
    assert done.returncode == 0, done.stderr
    assert "no CUDA device on this machine" in done.stdout and "nothing to check" in done.stdout
    # The make target runs the same module without any setup step (GPU machines have no network).
    make = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert make.returncode == 0 and "nothing to check" in make.stdout, make.stdout + make.stderr


@pytest.mark.slow
def test_every_check_runs_on_cpu(tmp_path):
    done = _eco("check", "gpu", "--device", "cpu", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {c["name"]: c["status"] for c in result["checks"]}
    assert status == {"train": "ok", "evaluate": "ok", "checkpoint + predict": "ok", "jpeg decode": "ok",
                      "ray: evaluate + batch inference": "ok"}, result["checks"]
    figures = {c["name"]: c["figures"] for c in result["checks"]}
    assert figures["train"]["clips/s"] > 0 and "->" in figures["train"]["loss"]
    assert figures["checkpoint + predict"]["predict agrees"].endswith("%")
    # Exactly 2 clips x 3 crops per video through the Ray Data model actors.
    ray_figures = figures["ray: evaluate + batch inference"]
    assert ray_figures["views"] == 6 * 16 // 4 and ray_figures["model actors"] == "1 CPU"
    assert ray_figures["batch predicted"] == 16
    table = done.stdout
    assert "GPU check on cpu" in table and table.count(" ok ") >= 5
