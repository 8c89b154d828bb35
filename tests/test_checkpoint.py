"""The project checkpoint format: contents, safe loading, atomic writes, DDP/compile unwrapping (pure)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import Config
from pipeline.model import CheckpointError, checkpoint_io
from pipeline.training import checkpoint as ckpt
from pipeline.training.optim import build_optimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _trained(model):
    opt = build_optimizer(model, Config().optim, lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    return opt


def _state(model, opt, **kw):
    args = dict(epoch=3, step=42, config=Config().to_dict(), label_names=["a", "b"], data_seed=7,
                metrics={"val_top1": 0.5})
    args.update(kw)
    return ckpt.build_state(model, opt, **args)


def test_roundtrip_contains_the_contract_keys(tmp_path):
    model = _model()
    opt = _trained(model)
    path = ckpt.save_checkpoint(tmp_path / "ck", _state(model, opt, schedule={"peak_lr": 0.1}),
                                extra_json={"workers": [{"rank": 0}]})
    assert sorted(os.listdir(path)) == ["checkpoint.pt", "model.pt", "workers.json"]
    raw = torch.load(path / "checkpoint.pt", weights_only=True)  # safe loading works on the raw file
    assert set(ckpt.REQUIRED_KEYS) <= set(raw)
    # model.pt: the same checkpoint without optimiser state, what evaluation and inference read.
    assert checkpoint_io.resolve(path) == str(path / "model.pt")
    weights = checkpoint_io.read(path)
    assert weights.file == str(path / "model.pt") and weights.layout == "project"
    assert weights.stored["optimizer"] == {} and raw["optimizer"]["state"]
    assert weights.stored.keys() == {k for k in raw if k != "model"}
    assert all(torch.equal(weights.state_dict[k], raw["model"][k]) for k in raw["model"])
    assert (path / "model.pt").stat().st_size < (path / "checkpoint.pt").stat().st_size
    state = ckpt.load_checkpoint(path)
    assert state["format"] == "eco-pipeline/1"
    assert (state["epoch"], state["step"], state["data_seed"]) == (3, 42, 7)
    assert state["label_names"] == ["a", "b"] and state["metrics"] == {"val_top1": 0.5}
    assert Config.from_dict(state["config"]) == Config()
    assert state["schedule"] == {"peak_lr": 0.1}

    fresh = _model()
    fresh(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
    opt2 = build_optimizer(fresh, Config().optim, lr=0.1)
    ckpt.restore(fresh, opt2, state)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])


def test_unwraps_ddp_and_compile(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = _model()
        model(torch.randn(1, 3, 8, 8))
        wrapped = torch.compile(nn.parallel.DistributedDataParallel(model), backend="eager")
        assert ckpt.unwrap(wrapped) is model
        state = _state(wrapped, None)
        assert list(state["model"]) == list(model.state_dict())  # no "module." / "_orig_mod." prefixes
        assert all(not k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    finally:
        dist.destroy_process_group()


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    model = _model()
    model(torch.randn(1, 3, 8, 8))
    ckpt.save_checkpoint(tmp_path / "ck", _state(model, None, epoch=1))
    ckpt.save_checkpoint(tmp_path / "ck", _state(model, None, epoch=2))
    assert ckpt.load_checkpoint(tmp_path / "ck")["epoch"] == 2
    assert os.listdir(tmp_path) == ["ck"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    model = _model()
    model(torch.randn(1, 3, 8, 8))
    ckpt.save_checkpoint(tmp_path / "ck", _state(model, None, epoch=1))
    bad = _state(model, None, epoch=2)
    bad["config"] = {"x": lambda: 0}  # torch.save cannot pickle a lambda: the write fails mid-way
    with pytest.raises(Exception):
        ckpt.save_checkpoint(tmp_path / "ck", bad)
    assert ckpt.load_checkpoint(tmp_path / "ck")["epoch"] == 1
    assert os.listdir(tmp_path) == ["ck"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="directory without checkpoint.pt") as e:
        ckpt.load_checkpoint(tmp_path)
    assert e.value.reason == "not_a_checkpoint"
    torch.save({"format": "other"}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="eco-pipeline/1") as e:
        ckpt.load_checkpoint(tmp_path)
    assert e.value.reason == "unsupported_format"
    with pytest.raises(ValueError, match="missing keys"):
        ckpt.save_checkpoint(tmp_path / "x", {"format": "eco-pipeline/1"})


def _run_with_checkpoints(run_dir, *names_and_steps):
    model = _model()
    opt = _trained(model)
    for name, step in names_and_steps:
        ckpt.save_checkpoint(run_dir / name, _state(model, opt, step=step))


def test_truncated_latest_checkpoint_resumes_from_the_one_before_and_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    _run_with_checkpoints(run, ("epoch_0001-step_0000002", 2), ("epoch_0001", 3), ("epoch_0002-step_0000004", 4))
    (run / "other").mkdir()  # not a checkpoint name: never a candidate
    latest = run / "epoch_0002-step_0000004"
    data = (latest / "checkpoint.pt").read_bytes()
    (latest / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # a partial copy
    with caplog.at_level("WARNING", logger="pipeline.training.checkpoint"):
        state, used = ckpt.load_latest_good(str(latest))
    # The previous checkpoint in the run's order is the end of epoch 1 (after its mid-epoch one), not the name
    # that sorts before it as text.
    assert (used, state["step"]) == (str(run / "epoch_0001"), 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith(f"latest checkpoint {latest} is unreadable (checkpoint.pt: truncated")
    assert lines[0].endswith(f"resuming from the one before it, {run / 'epoch_0001'}")

    # A readable latest checkpoint is used as it is, silently; with nothing readable, the latest's error.
    caplog.clear()
    assert ckpt.load_latest_good(str(run / "epoch_0001"))[1] == str(run / "epoch_0001") and not caplog.records
    with pytest.raises(CheckpointError, match="epoch_0001-step_0000002/checkpoint.pt: truncated"):
        (run / "epoch_0001-step_0000002" / "checkpoint.pt").write_bytes(b"PK\x03\x04")
        ckpt.load_latest_good(str(run / "epoch_0001-step_0000002"))


def test_checkpoint_order_in_a_run():
    names = ["epoch_0002", "epoch_0001", "epoch_0002-step_0000005", "epoch_0001-step_0000002", "epoch_0010"]
    assert sorted(names, key=ckpt.order_key) == ["epoch_0001-step_0000002", "epoch_0001", "epoch_0002-step_0000005",
                                                 "epoch_0002", "epoch_0010"]
    assert ckpt.order_key("checkpoint_2026-01-01") is None


def test_upload_writes_checkpoint_pt_last_and_a_failed_upload_leaves_nothing(tmp_path):
    import pyarrow.fs as pafs

    model = _model()
    src = ckpt.save_checkpoint(tmp_path / "local", _state(model, _trained(model)),
                               extra_json={"workers": [{"rank": 0}]})
    fs = pafs.LocalFileSystem()
    ckpt.upload_checkpoint(src, fs, str(tmp_path / "run" / "epoch_0001"))
    assert sorted(os.listdir(tmp_path / "run" / "epoch_0001")) == ["checkpoint.pt", "model.pt", "workers.json"]
    assert ckpt.load_checkpoint(tmp_path / "run" / "epoch_0001")["step"] == 42

    # Storage that refuses the directory (a file stands where it would go): the error, and nothing half-written.
    (tmp_path / "blocked").write_text("a file, not a directory")
    budget = ckpt.UploadBudget(budget_s=3600)
    assert budget.upload(src, fs, str(tmp_path / "blocked" / "epoch_0002")) is False  # retried at the next step
    assert budget.failing_since is not None and (tmp_path / "blocked").is_file()
    assert budget.upload(src, fs, str(tmp_path / "run" / "epoch_0002")) is True and budget.failing_since is None

    # Past the budget (0 s: the first failure): one error naming the destination and the key.
    with pytest.raises(Exception, match=r"blocked/epoch_0003: checkpoint upload still failing after 0 s, the "
                                        r"budget of checkpoint.upload_retry_s=0") as e:
        ckpt.UploadBudget(budget_s=0).upload(src, fs, str(tmp_path / "blocked" / "epoch_0003"))
    assert isinstance(e.value.__cause__, OSError)
