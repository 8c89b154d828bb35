"""One Ray start-up policy for every command and job: `ensure_ray(num_cpus=...)`.

1. Ray already initialised in this process: nothing to do.
2. An address given (`scaling.address`, or RAY_ADDRESS, which `ray job submit` sets for a job's driver): join it,
   without resource arguments (Ray refuses num_cpus/num_gpus when connecting to an existing cluster).
   RAY_ADDRESS=local forces a private local instance.
3. No address, and Ray's bootstrap file (`<ray temp dir>/ray_current_cluster`, written by `ray start --head`) names
   a cluster: join it when its GCS answers; when it does not (killed, or `ray stop` never finished), say so in one
   line and start a local instance instead of waiting a minute on the dead address.
4. Otherwise start a local instance with the command's resources.

One log line says which of these happened. Ray's own logging is kept at warnings (the console shows the
project's lines). Drivers outside a Ray job pass the storage variables (pipeline.storage.STORAGE_ENV_VARS) as
the job's runtime_env, so every Ray worker of the job (Ray Data operators, Ray Train workers that upload
checkpoints, inference actors) reads the same object storage as the driver; a job's driver gets them from the
runtime_env given to `ray job submit` instead (docs/cluster.md).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

from pipeline import storage

log = logging.getLogger(__name__)

# Ray's job supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR (the job's runtime_env) for the driver of every
# `ray job submit` job (ray/dashboard/modules/job/job_supervisor.py::_get_driver_env_vars).
JOB_ENV_VARS = ("RAY_JOB_CONFIG_JSON_ENV_VAR",)
# The unpacked copy of `--working-dir` that a job runs in is a `_ray_pkg_<hash>` folder under Ray's temp dir.
_RAY_PACKAGE_PREFIX = "_ray_pkg_"
# Ray Train's per-report INFO dumps and Ray Data's per-dataset banners: the project prints its own epoch lines.
_QUIET_LOGGERS = ("ray.train", "ray.data", "ray.tune")


class RayStartError(RuntimeError):
    """Ray could not be joined or started; the message says what to do."""


def in_ray_job() -> bool:
    """True in the driver of a `ray job submit` job, or anywhere whose working directory is Ray's unpacked copy of
    a job's `--working-dir`."""
    return any(os.environ.get(k) for k in JOB_ENV_VARS) or any(
        part.startswith(_RAY_PACKAGE_PREFIX) for part in Path(os.getcwd()).parts)


def check_job_paths(paths: dict[str, str | os.PathLike | None]) -> None:
    """Inside a Ray job, refuse relative local paths: they would resolve under the job's
    temporary copy of the working directory, which has no git-ignored folders and which Ray deletes, so reads
    fail and, worse, checkpoints and W&B runs written there are lost. `paths` maps the config key or flag to
    its value; raises ValueError naming every relative one."""
    if not in_ray_job():
        return
    bad = [(k, str(v)) for k, v in paths.items()
           if v and not storage.is_uri(v) and not os.path.isabs(os.path.expanduser(str(v)))]
    if bad:
        named = ", ".join(f"{k}={v!r}" for k, v in bad)
        raise ValueError(f"{named}: relative path inside a Ray job, where the working directory is Ray's temporary "
                         f"copy ({os.getcwd()}) and is deleted after the job; use an absolute path on storage "
                         f"every node sees (e.g. /shared/eco/runs) or a URI (s3://bucket/eco/runs)")


def bootstrap_file() -> Path:
    """Where `ray start --head` records the address of the cluster it started on this machine."""
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    return Path(base, "ray", "ray_current_cluster")


def recorded_cluster() -> str | None:
    """The GCS address (host:port) in Ray's bootstrap file, or None."""
    try:
        text = bootstrap_file().read_text().strip()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    return text or None


def gcs_answers(address: str, timeout_s: float = 2.0) -> bool:
    """True when something accepts TCP connections at host:port (a live GCS does; a dead cluster's port does not)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def ensure_ray(*, num_cpus: int | None = None, address: str | None = None,
               object_store_memory: int | None = None) -> str:
    """Join or start Ray by the policy above; returns "initialized", "joined" or "local"."""
    import ray

    if ray.is_initialized():
        return "initialized"
    quiet()
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and target != "local":
        _join(target, reason="RAY_ADDRESS" if not address else "scaling.address")
        return "joined"
    if target != "local":
        recorded = recorded_cluster()
        if recorded and gcs_answers(recorded):
            _join(recorded, reason=f"running cluster named by {bootstrap_file()}")
            return "joined"
        if recorded:
            log.warning("Ray: the cluster at %s named by %s is not running (stopped without `ray stop`?); starting a "
                        "local instance. Run `ray stop` to clear it, or start the cluster again to use it.",
                        recorded, bootstrap_file())
    kwargs = {"object_store_memory": object_store_memory} if object_store_memory else {}
    # Every process of a local instance runs on this machine, where this package is installed: the setup hook
    # applies the console policy there too (Ray Data banners and Ray Train INFO stay in Ray's log files).
    runtime_env = {**(storage.storage_runtime_env() or {}), "worker_process_setup_hook": quiet_ray_process}
    _remember(ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning",
                       runtime_env=runtime_env, **kwargs))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    log.info("Ray: started a local instance with %d CPUs (full logs in %s; set RAY_ADDRESS to use a cluster)",
             cpus, log_dir())
    return "local"


# The session directory of the instance this process started or joined: what `ray.init` returned (Ray has no
# public call that gives it later).
_SESSION: dict[str, str] = {}


def _remember(context) -> None:
    info = getattr(context, "address_info", None) or {}
    if info.get("session_dir"):
        _SESSION["dir"] = str(info["session_dir"])


def log_dir() -> str | None:
    """Ray's log directory of the connected session (every process's stdout/stderr, ray-data.log, train/): the
    one `ensure_ray` started or joined, else the newest session on this machine."""
    if "dir" in _SESSION:
        return os.path.join(_SESSION["dir"], "logs")
    latest = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray", "session_latest", "logs")
    return str(latest) if latest.exists() else None


def _join(address: str, *, reason: str) -> None:
    import ray

    # Inside a job the job's runtime_env (from `ray job submit`) already reaches every worker; a second one here
    # would only be ignored with a warning.
    runtime_env = None if in_ray_job() else storage.storage_runtime_env()
    try:
        _remember(ray.init(address=address, logging_level="warning", runtime_env=runtime_env))
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if "auth" in str(e).lower():
            hint = (" The cluster uses token authentication: set RAY_AUTH_MODE=token and the token "
                    "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), see docs/cluster.md.")
        raise RayStartError(f"Ray: cannot join the cluster at {address} ({reason}): {first}.{hint} "
                            f"Set RAY_ADDRESS=local to run on a private local instance instead.") from e
    res = ray.cluster_resources()
    log.info("Ray: joined the cluster at %s (%s; %d CPUs, %d GPUs)", address, reason, int(res.get("CPU", 0)),
             int(res.get("GPU", 0)))


def quiet_worker() -> None:
    """In a Ray Train worker: keep the job's log to the project's lines.

    Ray Train V2 logs every `ray.train.report` of every rank at INFO ("Reporting training result N: ...") through
    a logger named after its source file (a path inside Ray's package, outside the `ray.*` logger tree), so the
    loggers named by paths in Ray's package are kept at warnings; DDP's "Grad strides do not match bucket view
    strides" warning is a performance note about gradient memory layout, not an error.
    """
    import warnings

    import ray

    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    package = os.path.dirname(ray.__file__)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(package):
            logging.getLogger(name).setLevel(logging.WARNING)
    quiet()


# Ray Train V2's placement-group cleaner polls the State API every second to see whether the run's controller is
# alive; a local instance started without the dashboard serves no State API, so it logs this warning every second
# of the run (206 of `make demo`'s 327 lines without this filter). The cleaner only matters if the controller
# crashes, which a local instance outlives by minutes at most.
_REPEATED_WARNING = "Failed to query Ray Train Controller actor state"


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_ray_process() -> None:
    """`worker_process_setup_hook` of a local instance: the console policy of `quiet()` in every Ray process (the
    Train controller, Ray Data's coordinators, actors), less the repeated State-API warning above. Ray Data's
    deprecation of `ExecutionOptions.exclude_resources` is raised by Ray Train's own DataConfig, not by this
    project, and cannot be acted on here."""
    import warnings

    import ray

    # Ray's State API client finds its cluster through RAY_ADDRESS or, without it, by looking for running instances
    # on this machine; where there are several (a cluster and this local instance), the PlacementGroupCleaner's
    # monitor thread dies with a traceback. Name this instance (also in place of RAY_ADDRESS=local, inherited from
    # a driver that asked for a private instance: "local" is a search too).
    if ray.is_initialized() and os.environ.get("RAY_ADDRESS", "local") in ("", "local"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    warnings.filterwarnings("ignore", message=r".*exclude_resources.*deprecated")
    _filter_ray_train_loggers(_DropMessages(_REPEATED_WARNING))
    quiet()


def _filter_ray_train_loggers(flt: logging.Filter) -> None:
    """Add `flt` to every `ray.train.*` logger of this process, those that exist and those made later (a filter
    applies to the records of its own logger only, and Ray Train's modules are imported after this hook)."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("ray.train") and isinstance(logger, logging.Logger):
            logger.addFilter(flt)
    base = logging.getLoggerClass()

    class _Filtered(base):  # type: ignore[misc, valid-type]
        def __init__(self, name: str, level: int = logging.NOTSET):
            super().__init__(name, level)
            if name.startswith("ray.train"):
                self.addFilter(flt)

    logging.setLoggerClass(_Filtered)


def quiet() -> None:
    """Keep Ray's INFO chatter (per-report dicts, dataset banners) out of the console; warnings stay, and Ray's
    log files keep everything."""
    import sys

    import ray.data  # (configures the "ray.data" logger on import: adjust it afterwards)

    # Ray Data draws its operator bars with tqdm when stdout is a terminal. Elsewhere (a job log, a pipe, a Ray
    # worker) it would draw distributed bars through the driver; without them it logs its progress at INFO to
    # "ray.data", which stays in ray-data.log, and the commands print their own plain lines (pipeline.progress).
    # Turning the bars off instead makes Ray Data warn "Progress bars disabled" in every process.
    if not sys.stdout.isatty():
        ray.data.DataContext.get_current().use_ray_tqdm = False

    # A handler the root logger shares is left alone: Ray Train's workers use one "console" handler for both the
    # `ray.train` logger and the root logger, which carries the project's own lines (the epoch line).
    shared = set(map(id, logging.getLogger().handlers))
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        consoles = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler) and id(h) not in shared]
        for handler in consoles:
            handler.setLevel(logging.WARNING)
        if not consoles and not logger.handlers:
            logger.setLevel(logging.WARNING)
