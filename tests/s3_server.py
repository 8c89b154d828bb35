"""A real S3-compatible server (moto in server mode) on localhost, for the tests that keep clips and checkpoints on
s3://: the AWS variables set for this process, and Ray started by the project's own policy after them (as `eco`
does from a user's shell), so the variables reach every Ray worker through the job's runtime_env.

    with local_s3() as (client, proxy): ...                 # the project talks to the server directly
    with local_s3(fail_every=7) as (client, proxy): ...     # ... through a FaultyS3Proxy (tests/s3_faults.py)

`client` (boto3) always talks to the server directly: the test's own view of the bucket, past any proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from s3_faults import FaultyS3Proxy

BUCKET = "eco"


@contextlib.contextmanager
def local_s3(bucket: str = BUCKET, *, fail_every: int | None = None) -> Iterator[tuple[Any, FaultyS3Proxy | None]]:
    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    from pipeline import raystart

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO
    host, port = server.get_host_and_port()
    direct = f"http://{host}:{port}"
    proxy = FaultyS3Proxy(direct, fail_every=fail_every).start() if fail_every is not None else None
    env = {"AWS_ENDPOINT_URL_S3": proxy.url if proxy else direct, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in (*env, "ECO_STORAGE_RETRY_ATTEMPTS")}
    os.environ.update(env)
    try:
        if ray.is_initialized():
            ray.shutdown()
        assert raystart.ensure_ray(num_cpus=4) == "local"
        client = boto3.client("s3", endpoint_url=direct)
        client.create_bucket(Bucket=bucket)
        yield client, proxy
    finally:
        ray.shutdown()
        if proxy is not None:
            proxy.stop()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
