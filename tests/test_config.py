"""Config validation at load: every enumeration and key is checked on the driver with the dotted key named, so a
typo never reaches the cluster; `--set` reaches into mapping fields."""

from __future__ import annotations

import typing

import pytest

from pipeline.config import Config, ConfigError, DataConfig, TrainConfig, load_config
from pipeline.data.transforms import NORMALIZATION_PRESETS


def test_normalization_typo_fails_at_load_with_the_choices():
    with pytest.raises(ConfigError, match=r"data\.normalization: expected one of 'eco', 'imagenet', 'unit', got 'imagent'"):
        load_config(None, ["data.normalization=imagent"])


def test_config_choices_match_their_owners():
    # The config's enumeration is the transforms module's preset table: adding a preset means adding it here.
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["normalization"])) == set(NORMALIZATION_PRESETS)
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["batchnorm"])) == {"train", "partial", "frozen",
                                                                                   "sync"}


@pytest.mark.parametrize("override, message", [
    ("train.batchnorm=partal", r"train\.batchnorm: expected one of"),
    ("train.compile_backend=tvm", r"train\.compile_backend: expected one of"),
    ("train.amp=maybe", r"train\.amp: expected true or false"),
    ("trian.epochs=3", r"unknown config section 'trian'"),
    ("train.epoch=3", r"unknown config key train\.'epoch'"),
    ("train.epochs.max=3", r"train\.epochs is not a mapping"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_set_reaches_into_mapping_fields():
    cfg = load_config(None, ["data.decode_resources.decode_node=0.01", "scaling.resources_per_worker.gpu_node=1"])
    assert cfg.data.decode_resources == {"decode_node": 0.01}
    assert cfg.scaling.resources_per_worker == {"gpu_node": 1.0}
    # The whole config still round-trips through to_dict (W&B, checkpoints).
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_worker_group_start_timeout_is_ray_trains_variable_for_the_fit_only(monkeypatch):
    # Ray Train reads it from the driver's environment and forwards it to its controller (the elastic cluster test
    # sees the controller use it); set around the fit, restored after, untouched when the field is null.
    import os

    from pipeline.training.run import controller_env

    name = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    monkeypatch.setenv(name, "90")
    with controller_env(load_config(None, ["scaling.worker_group_start_timeout_s=15"])):
        assert os.environ[name] == "15"
    assert os.environ[name] == "90"
    with controller_env(load_config(None, [])):
        assert os.environ[name] == "90"
    with pytest.raises(ConfigError, match=r"scaling\.worker_group_start_timeout_s: must be > 0"):
        load_config(None, ["scaling.worker_group_start_timeout_s=0"])
