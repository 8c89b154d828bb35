"""`eco predict` as a Ray job: parse, build, launch (the library is pipeline/inference).

    ray job submit --working-dir . -- python jobs/predict.py --manifest M --checkpoint C --out DIR [--actors N]

takes exactly the arguments of `eco predict` (pipeline.cli.build_parser): `python jobs/predict.py --manifest M
--checkpoint C --out P` equals `eco predict --manifest M --checkpoint C --out P`. Inside a job, batch inference
joins the job's Ray cluster (ray.init() honours RAY_ADDRESS, which `ray job submit` sets).
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
    # `eco -v predict ...`: the verbose flag belongs to the top-level parser.
    verbose = [a for a in argv if a in ("-v", "--verbose")]
    return main([*verbose, "predict", *(a for a in argv if a not in verbose)])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
