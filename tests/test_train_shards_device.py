"""Training and evaluation from frame shards with `data.decode_on=device` through the real Ray Train worker (CPU):
the decode workers ship JPEG bytes, the worker's collate decodes and augments them on its device, and the model
actors of `evaluate` do the same."""

from __future__ import annotations

import math

import pytest

from pipeline.data.shard_writer import write_shards
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.evaluate import evaluate
from pipeline.training.run import train
from train_helpers import TINY_TRAIN, TINY_VAL, tiny_config, tiny_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_shards(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_shards")
    write_shards(tiny_dataset(tmp_path_factory), out, short_side=64, quality=90)
    return out


def test_train_and_evaluate_from_shards_decoding_on_the_device(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path / "runs", "tiny-shards-device", "data.format=shards",
                      "data.decode_on=device", "data.multiscale_crop=true", "data.horizontal_flip=true",
                      "scaling.num_workers=1", "train.batch_size=4", "wandb.enabled=false")
    result = train(cfg)
    state = load_checkpoint(result.latest_checkpoint)
    m = state["metrics"]
    assert state["config"]["data"]["decode_on"] == "device" and state["step"] == 3
    # Every training and validation clip went through the device decode and was counted once.
    assert (m["train_count"], m["train_clips"], m["val_count"], m["decode_failures"]) == (TINY_TRAIN, TINY_TRAIN,
                                                                                           TINY_VAL, 0)
    assert math.isfinite(m["train_loss"]) and math.isfinite(m["val_loss"])

    # `evaluate` takes the checkpoint's mode (JPEGs decoded and cropped in the model actor) and agrees with the
    # validation inside training. (CPU mode = device mode clip by clip: tests/test_jpeg_clips.py.)
    report = evaluate(result.latest_checkpoint, tiny_shards, out_dir=tmp_path / "eval")
    assert report["videos"] == TINY_VAL and report["incomplete_videos"] == 0 and report["views"] == TINY_VAL
    assert report["top1"] == pytest.approx(m["val_top1"])
    assert report["loss"] == pytest.approx(m["val_loss"], rel=1e-4)
