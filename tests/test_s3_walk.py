"""The whole path with everything on object storage (issue 11, items 7-13), against a real S3-compatible server
(moto in server mode) on localhost: prepare from s3://, train with checkpoints on s3:// (the W&B run local, its
sync command printed), `eco evaluate` of the S3 checkpoint with --out on s3://, `eco predict --manifest
s3://.../<dir>`, and frame shards on s3:// (never upscaled). Every printed path is a URI.

Ray is started by the project's own policy (pipeline.raystart) after the storage variables are set, as `eco`
does from a user's shell: the variables reach every Ray worker through the job's runtime_env, not through this
process's environment being inherited.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.data import manifest as m
from pipeline.data import sources
from pipeline.training.tracking import sync_command
from tests.wandb_offline import read_offline_run
from s3_server import local_s3
from train_helpers import TINY_TRAIN, TINY_VAL, tiny_config, tiny_dataset

pytestmark = pytest.mark.slow

BUCKET = "eco"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("boto3")
    with local_s3(BUCKET) as (client, _):
        local = tiny_dataset(tmp_path_factory)
        for video in sorted((local / "videos").rglob("*.mp4")):
            client.upload_file(str(video), BUCKET, f"src/{video.parent.name}/{video.name}")
        yield client


def test_everything_on_s3(s3, tmp_path, monkeypatch, capsys):
    from pipeline import cli
    from pipeline.data.shard_writer import write_shards
    from pipeline.training.evaluate import evaluate
    from pipeline.training.run import train

    monkeypatch.chdir(tmp_path)  # where `eco train` was "run": the W&B run for URI storage lands below it
    data = f"s3://{BUCKET}/prepared"

    # --- prepare from s3:// ----------------------------------------------------------------------------------
    summary = m.prepare(sources.FolderSource(f"s3://{BUCKET}/src"), data, val_fraction=0.25, probe_workers=1)
    assert summary.accepted == TINY_TRAIN + TINY_VAL

    # --- train: checkpoints on s3://, W&B offline run local with one sync command ---------------------------
    cfg = tiny_config(Path("unused"), Path("unused"), "tiny-s3", f"data.manifest={data}",
                      f"checkpoint.storage_path=s3://{BUCKET}/runs")
    result = train(cfg)
    assert result.latest_checkpoint == f"s3://{BUCKET}/runs/tiny-s3/epoch_0001"
    assert result.run_dir == f"s3://{BUCKET}/runs/tiny-s3"
    assert storage.is_file(f"{result.latest_checkpoint}/model.pt")
    assert result.wandb_runs and all(d.startswith(str(tmp_path / "outputs" / "wandb" / "tiny-s3"))
                                     for d in result.wandb_runs)
    assert read_offline_run(result.wandb_runs[0]).values("epoch/step") == [3]  # one epoch of 3 steps
    text = result.describe()
    assert sync_command(result.wandb_runs) in text
    assert f"latest checkpoint  s3://{BUCKET}/runs/tiny-s3/epoch_0001" in text

    # --- eco evaluate of the S3 checkpoint, report on s3:// ---------------------------------------------------
    report = evaluate(result.latest_checkpoint, data, out_dir=f"s3://{BUCKET}/eval")
    assert report["out_dir"] == f"s3://{BUCKET}/eval" and report["videos"] == TINY_VAL
    assert json.loads(storage.read_text(f"s3://{BUCKET}/eval/report.json"))["top1"] == report["top1"]
    assert storage.listdir(f"s3://{BUCKET}/eval") == ["confusion.png", "predictions.parquet", "report.json"]
    assert not (tmp_path / "s3:").exists()

    # --- eco predict --manifest s3://.../<prepared dir> -------------------------------------------------------
    capsys.readouterr()
    assert cli.main(["predict", "--manifest", data, "--checkpoint", result.latest_checkpoint,
                     "--out", f"s3://{BUCKET}/predictions", "--actors", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"predictions: s3://{BUCKET}/predictions" in printed
    from pipeline.inference.batch import read_predictions

    assert read_predictions(f"s3://{BUCKET}/predictions").num_rows == TINY_TRAIN + TINY_VAL

    # --- frame shards on s3://: 64x64 sources are stored at 64x64, not upscaled to the default 256 ----------
    shards = write_shards(data, f"s3://{BUCKET}/shards")
    assert (shards.videos, shards.failed) == (TINY_TRAIN + TINY_VAL, 0)
    assert shards.out_dir == f"s3://{BUCKET}/shards"
    table = m.read_manifest(f"s3://{BUCKET}/shards")
    assert set(table.column("width").to_pylist()) == {64} and set(table.column("height").to_pylist()) == {64}
    assert all(p.startswith(f"s3://{BUCKET}/shards/") for p in table.column("path").to_pylist())
