"""`eco prepare` as a Ray job: parse, build, launch (the library is pipeline/).

    ray job submit --working-dir . -- python jobs/prepare.py folder s3://bucket/ucf101 --out s3://bucket/prepared

takes exactly the arguments of `eco prepare` (pipeline.cli.build_parser): `python jobs/prepare.py folder ROOT --out
DIR` equals `eco prepare folder ROOT --out DIR`. Inside a job, `prepare` joins the job's Ray cluster instead of
starting a local one (ray.init() honours RAY_ADDRESS, which `ray job submit` sets).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pipeline.cli import main
except ImportError:  # run from a checkout that is not pip-installed: the repository root holds `pipeline/`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.cli import main


def run(argv: list[str]) -> int:
    # `eco -v prepare ...`: the verbose flag belongs to the top-level parser.
    verbose = [a for a in argv if a in ("-v", "--verbose")]
    return main([*verbose, "prepare", *(a for a in argv if a not in verbose)])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
