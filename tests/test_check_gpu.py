"""`eco check gpu` / `make gpu-check` on a machine without CUDA: it says so and exits 0; with `--device cpu` the
same checks (training with channels_last (bf16 and compiled on GPUs), evaluation with sample keeping, checkpoint + predict,
JPEG decoding, and the Ray evaluation / batch inference path) run at a tiny size and pass."""

from __future__ import annotations

import dataclasses
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
                      "device decode": "ok", "ray: evaluate + batch inference": "ok"}, result["checks"]
    figures = {c["name"]: c["figures"] for c in result["checks"]}
    assert figures["train"]["clips/s"] > 0 and "->" in figures["train"]["loss"]
    assert figures["checkpoint + predict"]["predict agrees"].endswith("%")
    # Exactly 2 clips x 3 crops per video through the Ray Data model actors.
    ray_figures = figures["ray: evaluate + batch inference"]
    assert ray_figures["views"] == 6 * 16 // 4 and ray_figures["model actors"] == "1 CPU"
    assert ray_figures["batch predicted"] == 16
    table = done.stdout
    assert figures["device decode"]["mean |device - host|"] == 0.0
    assert "GPU check on cpu" in table and table.count(" ok ") >= 6


def test_device_decode_check_on_cpu():
    """The check's `data.decode_on=device` rows on a CPU device (on a GPU: nvJPEG): JPEG clips decoded + augmented
    by `jpeg_clips.decode_clips`, equal to the host path's (the same decoder on CPU), and whole training steps fed
    by either path."""
    from pipeline.bench.check_gpu import CheckSettings, jpeg_batches, measure_device_decode
    from pipeline.data.jpeg_clips import ClipFinish, decode_clips
    from pipeline.model import eco_lite

    s = dataclasses.replace(CheckSettings.tiny(), train_clips=8)  # 2 batches: one step per path and batch
    batches = jpeg_batches(s)
    assert [len(b["label"]) for b in batches] == [s.batch, s.batch]
    clips = decode_clips(batches[0], ClipFinish(train=True, crop_size=s.size, short_side=73), device="cpu")
    assert clips.dtype == torch.uint8 and tuple(clips.shape) == (s.batch, s.segments, s.size, s.size, 3)
    torch.manual_seed(0)
    model = eco_lite(num_classes=s.classes, num_segments=s.segments)
    figures = measure_device_decode("cpu", s, model)
    assert figures["mean |device - host|"] == 0.0
    assert figures["decoded+augmented clips/s"] > 0
    assert figures["step clips/s, device decode"] > 0 and figures["step clips/s, host decode"] > 0
    assert "device / host" not in figures and "no GPU figure" in figures["note"]  # a ratio only on a GPU
