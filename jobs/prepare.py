"""`eco prepare` as a Ray job: parse, build, launch (the library is pipeline/).

    ray job submit --working-dir . -- python jobs/prepare.py folder s3://bucket/ucf101 --out s3://bucket/prepared

takes exactly the arguments of `eco prepare` (pipeline.cli.build_parser): `python jobs/prepare.py folder ROOT --out
DIR` equals `eco prepare folder ROOT --out DIR`. Inside a job, `prepare` joins the job's Ray cluster instead of
starting a local one (pipeline.raystart: RAY_ADDRESS, which `ray job submit` sets); paths must be absolute or
URIs (docs/cluster.md, "Paths in jobs").
"""

import sys
from pathlib import Path

# The job's working directory (the uploaded repo) comes first, ahead of any installed copy of `pipeline`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_subcommand  # noqa: E402


def run(argv: list[str]) -> int:
    return run_subcommand("prepare", argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
