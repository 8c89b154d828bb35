"""Typed, frozen run configuration.

A run is described by one `Config`: YAML recipes in `jobs/configs/` plus `--set section.key=value` overrides.
Unknown keys and values of the wrong type are rejected with the dotted key in the message. `Config.to_dict()` is
what travels into W&B and into every checkpoint; `Config.from_dict()` reads it back (resume, evaluate, predict).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the dotted key."""


@dataclass(frozen=True)
class ModelConfig:
    variant: Literal["lite", "full"] = "lite"
    # 16 segments is the paper's main setting (ECO_REFERENCE.md); 4/8/32 also work.
    num_segments: int = 16
    # 0.3 for Kinetics, 0.6 for UCF101 fine-tuning in the authors' scripts.
    dropout: float = 0.3
    # Path or URI of the authors' checkpoint or one of ours; None trains from scratch.
    pretrained: str | None = None
    # Instead of `pretrained`, start where the authors' Kinetics training started (docs/model.md): the 2D
    # trunk from TSN's BN-Inception file (bninception_rgb_kinetics_init-d4ee618d3399.pth) and the 3D part from a
    # Kinetics 3D ResNet-18 (C3DResNet18_rgb_16F_kinetics_v1.pth.tar); paths or URIs, each optional. The classifier
    # and any part without a file start fresh by the authors' rule.
    init_2d: str | None = None
    init_3d: str | None = None

    def validate(self) -> None:
        _check(self.num_segments >= 1, "model.num_segments", "must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        for key, value in (("model.init_2d", self.init_2d), ("model.init_3d", self.init_3d)):
            _check(value is None or self.pretrained is None, key,
                   "cannot be combined with model.pretrained (a whole ECO checkpoint already sets every weight): "
                   "set one of them to null")
            _check(value is None or bool(value), key, "must be a path or URI, or null")


@dataclass(frozen=True)
class DataConfig:
    # Directory written by `eco prepare` (manifest.parquet, labels.json) or the manifest file itself.
    manifest: str = ""
    # "video": decode the manifest's videos with decord; "shards": read the JPEG frame shards that
    # `eco prepare shards` wrote (data.manifest then names the shard directory): 7-10x cheaper per clip on CPU,
    # at several times the storage (docs/benchmarks.md).
    format: Literal["video", "shards"] = "video"
    # Shards only: where the JPEG frames are decoded. "cpu": in the Ray Data decode workers, which ship uint8
    # clips; "device": the workers ship the sampled frames' JPEG bytes and the augmentation's draws, and the
    # trainer (or the evaluation's model actor) decodes and augments on its own device, nvJPEG on a GPU
    # (pipeline.data.jpeg_clips). Same clips either way; a worker's cost per clip falls several-fold (measured:
    # docs/benchmarks.md), the trainer's rises by the decode.
    decode_on: Literal["cpu", "device"] = "cpu"
    train_split: str = "train"
    val_split: str = "val"
    # Frames are resized to this short side inside the decode workers, so small uint8 tensors cross the object
    # store; the trainer-side crop is `crop_size`. ECO: 256 -> 224 (the book used 224 -> 224).
    short_side: int = 256
    crop_size: int = 224
    # Normalisation preset applied on the trainer's device: "eco" matches the authors' weights (BGR, 0-255,
    # mean B104 G117 R128); see pipeline.data.transforms.NORMALIZATION_PRESETS.
    normalization: Literal["eco", "imagenet", "unit"] = "eco"
    # Training augmentation: the TSN/ECO multi-scale crop + horizontal flip. Direction-of-motion tasks (the
    # synthetic one) must turn the flip off: a flipped "left to right" clip is a "right to left" clip.
    multiscale_crop: bool = True
    horizontal_flip: bool = True
    # Control experiment: shuffle the sampled frames in time (the model should then be near chance on a task
    # that needs temporal order).
    shuffle_frames: bool = False
    # Ray Data decode stage: up to `decode_workers` decode tasks at a time, each holding `decode_cpus` logical
    # CPUs; their worker processes keep a killable child decode process across tasks and epochs.
    # `decode_resources` pins decoding to e.g. CPU-only nodes.
    decode_workers: int = 2
    decode_cpus: float = 1.0
    decode_resources: dict[str, float] = field(default_factory=dict)
    decode_batch_size: int = 4
    # decord's own thread count per reader: explicit, since 0 ("auto") breaks VP9 WebM (dmlc/decord#246).
    decode_threads: int = 1
    # Decode backend: "auto" decodes each video with the backend its probe chose (the manifest's `backend`
    # column: decord where it decodes the file right, PyAV for AV1 and files decord cannot open); "decord" or
    # "pyav" force one for every file (pipeline.data.decode).
    decoder: Literal["auto", "decord", "pyav"] = "auto"
    # A decode that takes longer is killed and its file quarantined (decord get_batch can hang, #269/#373).
    decode_timeout_s: float = 60.0
    # Restart the child decode process after this many clips to bound decord's memory growth.
    decode_max_clips_per_process: int = 2000
    # Clips each trainer prefetches ahead of the step.
    prefetch_batches: int = 2

    def validate(self) -> None:
        _check(self.crop_size >= 32, "data.crop_size", "must be >= 32")
        _check(self.short_side >= self.crop_size, "data.short_side", "must be >= data.crop_size")
        _check(self.decode_workers >= 1, "data.decode_workers", "must be >= 1")
        _check(self.decode_cpus > 0, "data.decode_cpus", "must be > 0")
        _check(self.decode_batch_size >= 1, "data.decode_batch_size", "must be >= 1")
        _check(self.decode_threads >= 1, "data.decode_threads", "must be >= 1 (0 breaks VP9, decord#246)")
        _check(self.decode_timeout_s > 0, "data.decode_timeout_s", "must be > 0")
        _check(self.decode_on == "cpu" or self.format == "shards", "data.decode_on",
               "'device' needs data.format=shards (videos are decoded by decord in the workers); valid: cpu, "
               "or device with data.format=shards")


@dataclass(frozen=True)
class OptimConfig:
    # SGD with Nesterov momentum (authors' recipe). `lr` is for `base_batch_size` clips per optimiser step and is
    # scaled linearly with the real global batch (workers x batch_size x grad_accum_steps).
    lr: float = 0.001
    base_batch_size: int = 60
    momentum: float = 0.9
    nesterov: bool = True
    # Not applied to BatchNorm parameters and biases.
    weight_decay: float = 5e-4
    clip_grad_norm: float | None = 40.0
    schedule: Literal["step", "cosine", "constant"] = "step"
    # For "step": multiply by `lr_decay` at each of these epochs.
    lr_steps: tuple[int, ...] = (15, 30)
    lr_decay: float = 0.1
    warmup_epochs: float = 0.0
    # Cosine decays to lr * min_lr_ratio.
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be > 0")
        _check(self.base_batch_size >= 1, "optim.base_batch_size", "must be >= 1")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(self.clip_grad_norm is None or self.clip_grad_norm > 0, "optim.clip_grad_norm", "must be > 0 or null")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    # Clips per worker per micro-batch; the optimiser steps every `grad_accum_steps` micro-batches
    # (authors: 15 x 4).
    batch_size: int = 15
    grad_accum_steps: int = 1
    eval_every_epochs: int = 1
    eval_batch_size: int = 16
    # Drives TSN offsets (from seed, epoch, video), init and shuffles.
    seed: int = 0
    # bf16 autocast and channels_last(_3d) on the training device, CPU or GPU (pipeline.training.engine). Both pay
    # off on GPUs with bf16 tensor cores; on CPUs without bf16 instructions (avx512_bf16/AMX) bf16 is several times
    # slower than fp32, so the CPU recipes turn both off.
    amp: bool = True
    channels_last: bool = True
    # torch.compile the model in place before the DDP wrap (checkpoint keys unchanged). The first steps pay the
    # compilation (minutes for ECO on a small CPU); inductor on CPU needs a C++ compiler (checked at start).
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    # BatchNorm policy (pipeline.training.engine): "train" every BN layer trains (the authors' published Kinetics
    # and UCF101 scripts, --no_partialbn); "partial" TSN's partial BN, every BN after the first in eval mode with
    # frozen affine parameters (the authors' model code's default; for fine-tuning on small data); "frozen" all
    # BN frozen; "sync" SyncBatchNorm across ranks (GPUs only; for small per-GPU batches of 16-frame clips).
    batchnorm: Literal["train", "partial", "frozen", "sync"] = "train"
    # Log per-step metrics every N optimiser steps.
    log_every_steps: int = 10
    # Rank 0 prints a progress line inside the epoch (step, clips/s, data wait, loss, time left in the epoch and the
    # run) at the first logging step (log_every_steps) at least this many seconds after the previous line: a job log
    # shows a long epoch moving without a line per step. 0: a line at every logging step.
    progress_every_s: float = 60.0
    # Stop after this many optimiser steps in total (0: no limit); used by tests and smoke runs.
    max_steps: int = 0

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1")
        _check(self.eval_every_epochs >= 1, "train.eval_every_epochs", "must be >= 1")
        _check(self.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
        _check(self.progress_every_s >= 0, "train.progress_every_s", "must be >= 0 (0: every logging step)")
        _check(self.max_steps >= 0, "train.max_steps", "must be >= 0")


@dataclass(frozen=True)
class ScalingConfig:
    # A fixed number of training workers, or [min, max] for elastic training: Ray
    # Train V2 starts with what the cluster can give (at least min), restarts with the workers that remain when
    # one is lost, and grows back toward max when resources return. The global batch is that of `max` workers at
    # every size (train.grad_accum_steps is scaled by max / world), so max x grad_accum_steps must be divisible
    # by every world size in the range.
    num_workers: int | tuple[int, ...] = 2
    # Elastic runs: how often (seconds) Ray Train checks whether the cluster could run more (or fewer) workers
    # while training is healthy (ScalingConfig.elastic_resize_monitor_interval_s). Growing restarts the group
    # from the latest checkpoint, so each check that resizes costs the steps since it (checkpoint.every_steps).
    elastic_resize_monitor_interval_s: float = 60.0
    # Seconds a new worker group waits for its resources before Ray Train's controller gives up and decides again
    # (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S; None: Ray's 60 s). Elastic runs: right after a node is lost, Ray's
    # view of the cluster can still count the node's resources, so the controller first asks for the old size and
    # waits this long before it starts with the workers that remain. A timed-out start is retried, not counted as a
    # failure, so spot recipes use ~15 s (measured: tests/test_cluster_elastic.py spent the whole 60 s there).
    worker_group_start_timeout_s: float | None = None
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Extra custom resources per training worker (e.g. {"gpu_node": 0.01}).
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    # Ray address; None starts (or joins) a local instance by itself.
    address: str | None = None
    # Logical CPUs for an auto-started local Ray instance (None: Ray's default). On 2 cores use 4+ so that the
    # training workers leave room for the decode stage.
    local_num_cpus: int | None = None

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    def validate(self) -> None:
        n = self.num_workers
        if isinstance(n, tuple):
            _check(len(n) == 2, "scaling.num_workers", f"expected an integer or [min, max], got {list(n)}")
            _check(1 <= n[0] <= n[1], "scaling.num_workers", f"[min, max] needs 1 <= min <= max, got {list(n)}")
        else:
            _check(n >= 1, "scaling.num_workers", "must be >= 1")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _check(self.elastic_resize_monitor_interval_s >= 0, "scaling.elastic_resize_monitor_interval_s", "must be >= 0")
        _check(self.worker_group_start_timeout_s is None or self.worker_group_start_timeout_s > 0,
               "scaling.worker_group_start_timeout_s", "must be > 0 (or null: Ray's default)")


@dataclass(frozen=True)
class CheckpointConfig:
    # Local directory or URI (s3://, gs://) given to RunConfig(storage_path=...).
    storage_path: str = "outputs/runs"
    # Submitting the same name again resumes from its latest checkpoint.
    run_name: str = "eco"
    # Worker failures tolerated before the run fails (FailureConfig.max_failures).
    max_failures: int = 3
    # Checkpoints kept by validation top-1 (CheckpointConfig.num_to_keep); Ray Train also always keeps the latest.
    num_to_keep: int = 1
    # Also checkpoint every N optimiser steps inside an epoch (0: only at epoch ends), with the exact data position
    # (the clips every rank has trained on in the epoch), so a restart after a lost node redoes at most N steps
    # and a resume trains each remaining clip of the epoch once. A checkpoint of ECO-Lite is ~0.2 GB:
    # pick N so that writing it costs a small share of the time N steps take.
    every_steps: int = 0
    # Every N optimiser steps each worker asks Ray Train whether a node of the group is being preempted
    # (ray.train.get_preemption_info: Ray Core marks a node draining on SIGTERM to its `ray start`, a spot reclaim,
    # `ray drain-node` or an autoscaler drain; Ray Train's watcher polls the drains every 5 s), and on a new notice
    # writes a mid-epoch checkpoint at once, so the restart after the loss redoes only the steps trained after it
    # (docs/training.md). The call is a barrier across workers, one round trip to Ray Train; 0: never ask. A SIGTERM
    # drain leaves 30 s (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S), cloud spot notices 30 s to 2 min: keep N steps
    # well under that.
    preemption_check_steps: int = 10
    # Object storage faults (docs/cluster.md, "Storage faults"). Attempts per storage request, the first included,
    # with the AWS SDK's standard backoff (pyarrow's AwsStandardS3RetryStrategy; pyarrow's own default is 3): for
    # the checkpoints, Ray Train's run directory and every clip the run reads.
    storage_retry_attempts: int = 10
    # A checkpoint whose upload still fails is retried at the next step (the run's last one, in place with
    # backoff) for this many seconds from the first failure; then the run fails with an error naming the URI, and
    # resubmitting it resumes from the last complete checkpoint. 15 min outlasts a throttled bucket or a
    # restarting gateway without training for hours on storage that is gone.
    upload_retry_s: float = 900.0

    def validate(self) -> None:
        _check(bool(self.run_name), "checkpoint.run_name", "must be non-empty")
        _check(self.storage_retry_attempts >= 1, "checkpoint.storage_retry_attempts", "must be >= 1")
        _check(self.upload_retry_s >= 0, "checkpoint.upload_retry_s", "must be >= 0 (0: no retry)")
        _check(self.max_failures >= -1, "checkpoint.max_failures", "must be >= -1 (-1: unlimited)")
        _check(self.num_to_keep >= 1, "checkpoint.num_to_keep", "must be >= 1")
        _check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0 (0: only at epoch ends)")
        _check(self.preemption_check_steps >= 0, "checkpoint.preemption_check_steps", "must be >= 0 (0: never ask)")


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = True
    project: str = "eco-pipeline"
    entity: str | None = None
    # "offline" unless the user configures an API key and asks for "online"; the key is read from the
    # environment by wandb itself, never from the config.
    mode: Literal["offline", "online", "disabled"] = "offline"
    # Where offline runs are written (wandb's `dir`); None puts them under the run's storage directory.
    dir: str | None = None
    log_sample_clips: int = 4
    # W&B run group and tags: `eco sweep` puts every trial of a sweep in one group named after the sweep
    # (pipeline.training.sweep), so the dashboard compares them side by side.
    group: str | None = None
    tags: tuple[str, ...] = ()

    def validate(self) -> None:
        _check(self.log_sample_clips >= 0, "wandb.log_sample_clips", "must be >= 0")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        # Elastic runs keep the global batch of max workers at every world size (docs/training.md): each size's
        # gradient accumulation must be a whole number.
        s, accum = self.scaling, self.train.grad_accum_steps
        uneven = [w for w in range(s.min_workers, s.max_workers + 1) if (s.max_workers * accum) % w]
        _check(not uneven, "scaling.num_workers",
               f"with {list(s.num_workers) if s.elastic else s.num_workers} workers and train.grad_accum_steps="
               f"{accum}, the global batch of {s.max_workers} x {accum} micro-batches cannot be split evenly over "
               f"{', '.join(map(str, uneven))} workers: set train.grad_accum_steps to a multiple of "
               f"{_even_accum(s.min_workers, s.max_workers)}, or narrow the range")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists): for W&B, checkpoints and `weights_only` loading."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, prefix="").validate()

    def replace(self, overrides: list[str] | dict[str, Any]) -> "Config":
        """Apply `section.key=value` overrides (strings are parsed as YAML scalars)."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
        for key, value in items:
            _set_dotted(data, key, value)
        return Config.from_dict(data)


def read_yaml(path: str | Path, what: str, error: type[Exception] = ConfigError) -> Any:
    """The YAML document at `path` ({} when empty); `error` names the file as `what` ("config file", ...) when it
    is missing or not YAML."""
    import yaml  # here, not at the top: the GPU check imports this module on machines without PyYAML

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}") from e


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (None: defaults) and apply `--set` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path, "config file")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
        # Recipes may carry prose (command, expected time/accuracy) under `recipe:`; it is not configuration.
        data.pop("recipe", None)
    cfg = Config.from_dict(data)
    return cfg.replace(overrides) if overrides else cfg


def _even_accum(min_workers: int, max_workers: int) -> int:
    """The smallest gradient accumulation a such that max_workers x a micro-batches split evenly over every world
    size in [min_workers, max_workers]."""
    need = math.lcm(*range(min_workers, max_workers + 1))
    return need // math.gcd(need, max_workers)


def _check(ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {expected}")


def _split_override(item: str) -> tuple[str, Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from e
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """`section.key=value`, or deeper into a mapping field: `data.decode_resources.decode_node=0.01` sets one entry
    of `data.decode_resources` (entries of mapping fields may be new; every other level must exist)."""
    parts = key.split(".")
    if len(parts) < 2:
        raise ConfigError(f"override {key!r}: expected section.key (sections: {', '.join(data)})")
    section, name, rest = parts[0], parts[1], parts[2:]
    if section not in data:
        raise ConfigError(f"unknown config section {section!r} in {key!r}; valid: {', '.join(data)}")
    if name not in data[section]:
        raise ConfigError(f"unknown config key {section}.{name!r}; valid: "
                          f"{', '.join(section + '.' + k for k in data[section])}")
    if not rest:
        data[section][name] = value
        return
    target = data[section][name]
    if not isinstance(target, dict):
        raise ConfigError(f"override {key!r}: {section}.{name} is not a mapping, so it has no sub-keys")
    for part in rest[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
    target[rest[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        valid = ", ".join(f"{prefix}{n}" for n in sorted(names))
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; valid: {valid}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{key}.")
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # a bug in this module, not in the user's config
