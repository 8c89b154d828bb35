"""`eco demo` as users run it (a fresh process, its own local Ray instance), shortened to 1 epoch at 64 px: what the
console shows (issue 12, "the console a newcomer sees") and that every path it prints exists.

The full demo trains 20 epochs, one line each, so it stays under 60 lines when the rest of its output, measured
here, stays under 60 - 20.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# ~90 s here; `make demo` runs under its own 1500 s limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
DEMO_EPOCHS = 20  # jobs/configs/synthetic_demo.yaml
EPOCHS = 1
# What used to drown the project's lines: Ray Train V2's PlacementGroupCleaner State-API warning (every second),
# Ray Train's INFO lines and per-report dicts, Ray Data's per-dataset banners, a Ray-internal deprecation.
NOISE = ("PlacementGroupCleaner", "Failed to query Ray Train Controller", "Reporting training result",
         "Execution plan of Dataset", "Starting execution of Dataset", "RayDeprecationWarning",
         "Wrapping provided model", "Setting up process group", "Started training worker group")


def test_demo_console_is_the_projects_lines(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own instance, never a cluster another test left running
    env.pop("RAY_DATA_DISABLE_PROGRESS_BARS", None)  # the console a user sees (conftest turns Ray Data's off)
    done = subprocess.run(
        # 1 epoch at 64 px (the recipe's 96 px crops train ~2x slower per step): the console is the subject here.
        # 16 videos per class instead of 60 (12 for training): the whole path at a quarter of the clips.
        [sys.executable, "-m", "pipeline.cli", "demo", "--out", str(out), "--videos-per-class", "16",
         "--set", f"train.epochs={EPOCHS}",
         "--set", "data.short_side=72", "--set", "data.crop_size=64"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    shown = "\n".join(lines)
    # 1 epoch does not reach the 90 % target: exit 1 with "NOT MET" is the demo working as documented.
    assert done.returncode in (0, 1), shown[-4000:]
    assert "Traceback" not in shown, shown[-4000:]

    epoch_lines = [line for line in lines if re.search(rf"epoch +\d+/{EPOCHS} ", line)]
    assert len(epoch_lines) == EPOCHS, shown
    # Progress lines (the probe's and the evaluation's, training's inside an epoch) come at intervals of time:
    # expected, and not counted against the bound on the rest.
    progress = [line for line in lines if re.search(r"pipeline\.progress: |step +\d+/\d+ \(epoch ", line)]
    assert progress, shown
    other = len(lines) - len(epoch_lines) - len(progress)
    assert other + DEMO_EPOCHS < 60, f"{other} lines besides the epoch lines:\n{shown}"
    # At most one token-authentication line (Ray's, once per process that connects: the driver), and no
    # "Progress bars disabled" warnings (Ray Data logs its progress to its file where stdout is not a terminal).
    assert sum("Token authentication" in line for line in lines) <= 1, shown
    assert not [line for line in lines if "Progress bars disabled" in line], shown
    assert not [line for line in lines if any(n in line for n in NOISE)], shown

    # --- the result, and every place it names ------------------------------------------------------------------
    top1 = re.search(r"\[demo\] validation: top-1 +([\d.]+)%", shown)
    assert top1 and 0.0 <= float(top1.group(1)) <= 100.0, shown
    checkpoint = re.search(r"latest checkpoint +(\S+)", shown)
    wandb_run = re.search(r"upload: wandb sync (\S+)", shown)
    report_dir = re.search(r"\[demo\] evaluation report +(\S+)", shown)
    assert checkpoint and wandb_run and report_dir, shown
    assert (Path(checkpoint.group(1)) / "model.pt").is_file()
    report = json.loads((Path(report_dir.group(1)) / "report.json").read_text())
    assert f"{report['top1']:.1%}" == f"{top1.group(1)}%"  # the printed figure is the report's
    assert list(Path(wandb_run.group(1)).glob("run-*.wandb"))
    # Where the user asked (--out), not a temporary copy.
    assert all(Path(m.group(1)).is_relative_to(out) for m in (checkpoint, wandb_run, report_dir))
    # Ray's full logs are named, and exist.
    logs = re.search(r"full logs in (\S+?)[;)]", shown)
    assert logs and Path(logs.group(1)).is_dir(), shown
