"""The GPU path exercised on CPU through the real Ray Train worker (issue: the GPU path, proven without a GPU).

- Batches that live on an emulated accelerator (tests/residency.py) go through training, evaluation and W&B sample
  logging: a host-only operation on them would fail the run, as `.numpy()` on a CUDA tensor does.
- Every rank evaluates with rank 0's BatchNorm statistics, the ones the checkpoint saves: the validation loss during
  training equals a single-process evaluation of the saved checkpoint.
- Ranks draw from distinct, reproducible torch seeds.
- bf16 autocast + channels_last + torch.compile (aot_eager) + partial BN train through the worker, and the compiled
  bf16 evaluation agrees with an fp32 eager evaluation of the saved checkpoint.
- A max_steps stop inside an epoch records the epoch as incomplete with its data position; the resumed run (the same
  run name submitted again) trains only that epoch's clips not yet trained on (issue 15), appends to the same W&B
  run, and the best validation top-1 and the best checkpoint survive the resume.
- `evaluate --clips 2 --crops 3` on Ray Data model actors aggregates exactly 6 views per video.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.engine import rank_seed
from pipeline.training.evaluate import evaluate
from pipeline.training.run import train
from pipeline.training.tracking import wandb_dir
from tests.wandb_offline import find_offline_runs, read_offline_run
from tests.residency import resident_batch  # by package path: Ray workers import it to unpickle the hook
from train_helpers import TINY_VAL, tiny_config, tiny_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(ray_session, tmp_path_factory):
    return tiny_dataset(tmp_path_factory)


def test_amp_channels_last_compile_partial_bn_through_the_worker(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", "tiny-compiled", "scaling.num_workers=1", "train.batch_size=4",
                      "train.amp=true", "train.channels_last=true", "train.compile=true",
                      # aot_eager: dynamo + AOT autograd in the worker without minutes of C++ compilation of ECO on
                      # 2 cores (inductor itself: tests/test_engine.py)
                      "train.compile_backend=aot_eager", "train.batchnorm=partial",
                      # Partial BN freezes every BN layer but the first at its initial statistics, which leaves a
                      # randomly initialised ECO unnormalised: at the tiny runs' lr of 0.01 the loss reached 10
                      # (NaN under load, where bf16 reductions run in another order). The recipe's lr keeps it near
                      # ln(4).
                      "optim.lr=0.001", "optim.clip_grad_norm=5",
                      "model.dropout=0.0")
    result = train(cfg)
    state = load_checkpoint(result.latest_checkpoint)
    m = state["metrics"]
    assert state["step"] == 3 and math.isfinite(m["train_loss"]) and math.isfinite(m["val_loss"])
    assert m["compiled_graphs"] >= 1  # train.compile is honoured: dynamo captured the model
    # Checkpoint keys are the model's own (compiled in place: no `_orig_mod.` prefix).
    assert not any("_orig_mod" in k or k.startswith("module.") for k in state["model"])

    # Partial BN: the first BN layer trained; every later one kept its initial statistics and affine parameters.
    bn_means = [k for k in state["model"] if k.endswith("running_mean")]
    first, rest = bn_means[0], bn_means[1:]
    assert not torch.equal(state["model"][first], torch.zeros_like(state["model"][first]))
    for key in rest:
        prefix = key[: -len("running_mean")]
        assert torch.equal(state["model"][key], torch.zeros_like(state["model"][key])), key
        assert torch.equal(state["model"][prefix + "weight"], torch.ones_like(state["model"][prefix + "weight"]))

    # The compiled bf16 evaluation during training against fp32 eager on the same weights (the Ray Data actors):
    # bf16 keeps ~3 significant digits, so the losses agree to a few percent.
    report = evaluate(result.latest_checkpoint, tiny_data, out_dir=tmp_path / "eval")
    assert report["loss"] == pytest.approx(m["val_loss"], rel=0.05)


def test_resident_batches_bn_statistics_rank_seeds_partial_epoch_resume(tiny_data, tmp_path):
    # One run for the residency guard, rank 0's BN statistics, rank seeds and the partial epoch (each Ray Train run
    # costs ~40 s of start-up on 2 cores).
    cfg = tiny_config(tiny_data, tmp_path / "runs", "tiny-partial", "train.max_steps=2", "wandb.log_sample_clips=3")
    first = train(cfg, batch_hook=resident_batch)
    state = load_checkpoint(first.latest_checkpoint)
    m = state["metrics"]
    # Stopped after 2 of the epoch's 3 steps: not a complete epoch.
    assert (state["epoch"], state["step"], m["epoch_complete"]) == (0, 2, 0.0)
    # 2 steps x 2 ranks x 2 clips: 8 of the 12 training clips, recorded as the epoch's data position.
    assert (state["data_position"]["epoch"], state["data_position"]["rows_trained"]) == (0, 8)
    assert Path(first.latest_checkpoint).name == "epoch_0001-step_0000002"
    stopped_val = m["val_top1"]

    # Batches on an (emulated) accelerator: the sample clips were copied off the device and logged.
    run = read_offline_run(find_offline_runs(wandb_dir(cfg))[-1])
    assert any(k.startswith("val/sample_clips") for row in run.history for k in row)

    # Both ranks scored the validation clips with the checkpoint's statistics: same loss as one process.
    report = evaluate(first.latest_checkpoint, tiny_data, out_dir=tmp_path / "eval")
    assert report["videos"] == TINY_VAL and report["views"] == TINY_VAL
    assert report["model_actors"] == "1 CPU"  # scored on a Ray Data model actor, not on the driver
    assert report["loss"] == pytest.approx(m["val_loss"], rel=1e-4, abs=1e-6)
    assert report["top1"] == pytest.approx(m["val_top1"])

    workers = json.loads(Path(first.latest_checkpoint, "workers.json").read_text())
    assert [w["torch_seed"] for w in workers] == [rank_seed(cfg.train.seed, 0), rank_seed(cfg.train.seed, 1)]

    # The resume (no batch hook): epoch 1's remaining clips, then epoch 2.
    second = train(cfg.replace({"train.max_steps": 0, "train.epochs": 2}))
    resumed = load_checkpoint(second.latest_checkpoint)
    # Epoch 1 went on with its 4 clips not yet trained on (1 step), then epoch 2 (3 steps).
    assert (resumed["epoch"], resumed["step"]) == (2, 2 + 1 + 3)
    assert resumed["metrics"]["resumed_from_epoch"] == 0
    runs = [read_offline_run(p) for p in find_offline_runs(wandb_dir(cfg))]
    vals = [v for r in runs for v in r.values("epoch/val_top1")]
    assert vals[0] == pytest.approx(stopped_val)
    assert resumed["metrics"]["best_val_top1"] == pytest.approx(max(vals))
    assert runs[-1].summary["best_val_top1"] == pytest.approx(max(vals))
    # Submitting the same run name again is one W&B run: one offline folder per launch, the same run id (wandb sync
    # appends), each step once.
    # A segment per checkpoint (sealed before it is reported): the stopped launch's, then the resumed launch's
    # epoch 1 end and epoch 2.
    assert len(runs) == 3 and len({r.run_id for r in runs}) == 1 and all(r.exited for r in runs)
    assert [r.values("train/step") for r in runs] == [[1, 2], [3], [4, 5, 6]]
    # The stopped launch logged epoch 1 incomplete; the resumed launch's row for the completed epoch 1 is in W&B too.
    assert [r.values("epoch") for r in runs] == [[1, 1], [1, 1], [2, 2]]  # epoch row + evaluation row
    # Keep-best + latest (checkpoint.num_to_keep=1): the latest is epoch 2; the best is the highest val_top1.
    assert second.latest_checkpoint.endswith("epoch_0002")
    assert load_checkpoint(second.best_checkpoint)["metrics"]["val_top1"] == pytest.approx(max(vals))

    # Multi-clip, multi-crop evaluation on the model actors: exactly 2 x 3 views per video, none twice.
    report = evaluate(second.latest_checkpoint, tiny_data, num_clips=2, crops=3, out_dir=tmp_path / "eval6")
    assert report["videos"] == TINY_VAL and report["incomplete_videos"] == 0 and report["views"] == 6 * TINY_VAL
    assert pq.read_table(tmp_path / "eval6" / "predictions.parquet").column("views").to_pylist() == [6] * TINY_VAL
