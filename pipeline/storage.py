"""Local paths and URIs, through pyarrow filesystems: the one place that decides what a URI is.

Every command reads and writes checkpoints, manifests, reports and predictions through these functions, so
`s3://bucket/runs`, `gs://...`, `file:///...` and `/shared/runs` behave alike. URIs are kept whole wherever they
are printed or stored (a path without its scheme is one no command accepts back); local paths are made absolute
(Ray workers do not share the driver's working directory).

Credentials are never read here: pyarrow's filesystems take them from the environment. `STORAGE_ENV_VARS` lists
the variables forwarded to every Ray process that touches storage (`storage_runtime_env`), so that Ray Train
workers and actors on a cluster started before the user's shell see the same endpoint and keys as the driver.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

# Forwarded to Ray workers when set in the driver's environment (docs/cluster.md, "Storage credentials").
# AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 point pyarrow's S3 filesystem at an S3-compatible server (MinIO, Ceph,
# moto); GOOGLE_APPLICATION_CREDENTIALS is read by the GCS filesystem.
STORAGE_ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                    "AWS_EC2_METADATA_DISABLED", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
                    "ECO_STORAGE_RETRY_ATTEMPTS")

# Attempts per S3 request, the first included (docs/cluster.md, "Storage faults"). pyarrow's default is 3, which a
# throttled bucket (503 SlowDown) or a few reset connections in a row exhaust within a second; 10 attempts of the
# AWS SDK's standard strategy (exponential backoff with jitter, capped at 20 s) ride out about a minute of trouble.
# `eco train` sets the variable from checkpoint.storage_retry_attempts; it is forwarded to every Ray process.
RETRY_ATTEMPTS_ENV = "ECO_STORAGE_RETRY_ATTEMPTS"
DEFAULT_RETRY_ATTEMPTS = 10

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


class StorageError(ValueError):
    """A path or URI cannot be opened; the message names it."""


def is_uri(path: str | os.PathLike) -> bool:
    """True for scheme://... (s3://, gs://, file://, hdfs://; a scheme of two or more characters, so a Windows
    drive letter is not one); False for plain local paths."""
    return bool(_SCHEME.match(str(path)))


def absolute(path: str | os.PathLike) -> str:
    """URIs as they are; local paths expanded (~) and made absolute."""
    path = str(path)
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def retry_attempts() -> int:
    """Attempts per S3 request: ECO_STORAGE_RETRY_ATTEMPTS, else DEFAULT_RETRY_ATTEMPTS."""
    raw = os.environ.get(RETRY_ATTEMPTS_ENV)
    if raw is None:
        return DEFAULT_RETRY_ATTEMPTS
    try:
        value = int(raw)
    except ValueError as e:
        raise StorageError(f"{RETRY_ATTEMPTS_ENV}={raw!r}: expected a whole number of attempts (>= 1)") from e
    if value < 1:
        raise StorageError(f"{RETRY_ATTEMPTS_ENV}={raw!r}: expected a whole number of attempts (>= 1)")
    return value


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with `retry_attempts` attempts per request (AwsStandardS3RetryStrategy), kept when
    pickled: pyarrow's own pickling drops the retry strategy, so a Ray worker or the Ray Train controller would get
    3 attempts back."""

    def __init__(self, *, retry_attempts: int, **options: Any):
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=retry_attempts), **options)
        self.retry_attempts = retry_attempts

    def __reduce__(self):
        _, (options,) = super().__reduce__()
        return _rebuild_s3, (self.retry_attempts, options)


def _rebuild_s3(retry_attempts: int, options: dict[str, Any]) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(retry_attempts=retry_attempts, **options)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI; S3 retries each request (`retry_attempts()`)."""
    path = str(path)
    if is_uri(path):
        try:
            fs, inner = pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise StorageError(f"{path}: not a path or URI pyarrow can open: {e}") from e
        if isinstance(fs, pafs.S3FileSystem) and not isinstance(fs, RetryingS3FileSystem):
            # The same options from_uri chose (region, endpoint, credentials), with the retry budget.
            _, (options,) = fs.__reduce__()
            fs = RetryingS3FileSystem(retry_attempts=retry_attempts(), **options)
        return fs, inner.rstrip("/") or inner
    return pafs.LocalFileSystem(), absolute(path)


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """The URI (or local path) of `path` inside `fs`, as every command accepts it back: Ray Train hands out
    checkpoints as (filesystem, path without scheme)."""
    if isinstance(fs, pafs.LocalFileSystem) or is_uri(path):
        return path
    scheme = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}.get(fs.type_name)
    if scheme is None:
        raise StorageError(f"{path}: on a {fs.type_name} filesystem, which has no URI scheme here")
    return f"{scheme}://{path.lstrip('/')}"


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` under a local directory (made absolute) or a URI (scheme and authority kept)."""
    base = str(base)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(absolute(base), *parts)


def parent(path: str | os.PathLike) -> str:
    path = str(path).rstrip("/")
    return posixpath.dirname(path) if is_uri(path) else os.path.dirname(absolute(path))


def basename(path: str | os.PathLike) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def exists(path: str | os.PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_file(path: str | os.PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def is_dir(path: str | os.PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def makedirs(path: str | os.PathLike) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) of the entries directly under `path`, sorted; [] when it does not exist."""
    fs, p = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, p = resolve(path)
    try:
        # A random-access file reads its known size in one request. An input stream's read() of unknown length
        # grows its buffer in ranged requests: a 150 MB checkpoint took 70 s from a local S3 server, against 0.5 s.
        with fs.open_input_file(p) as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: file not found") from e


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8-sig")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file. Local files appear atomically (temp file + rename); object stores publish a PUT whole."""
    fs, p = resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload_dir(local_dir: str | os.PathLike, dest: str) -> None:
    """Copy a local directory's files to `dest` (a URI or another local directory)."""
    dst_fs, dst = resolve(dest)
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(absolute(local_dir), dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dst_fs)


def storage_env() -> dict[str, str]:
    """The variables of STORAGE_ENV_VARS set in this process."""
    return {k: os.environ[k] for k in STORAGE_ENV_VARS if k in os.environ}


def storage_runtime_env() -> dict[str, Any] | None:
    """A Ray runtime_env forwarding `storage_env()` (None when nothing is set, so Ray adds no runtime env)."""
    env = storage_env()
    return {"env_vars": env} if env else None
