"""`eco predict` as a Ray job: parse, build, launch (the library is pipeline/inference).

    ray job submit --working-dir . -- python jobs/predict.py --manifest M --checkpoint C --out DIR [--actors N]

takes exactly the arguments of `eco predict` (pipeline.cli.build_parser): `python jobs/predict.py --manifest M
--checkpoint C --out P` equals `eco predict --manifest M --checkpoint C --out P`. Inside a job, batch inference
joins the job's Ray cluster (pipeline.raystart: RAY_ADDRESS, which `ray job submit` sets); M, C and P must be
absolute paths or URIs (docs/cluster.md, "Paths in jobs").
"""

import sys
from pathlib import Path

# The job's working directory (the uploaded repo) comes first, ahead of any installed copy of `pipeline`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_subcommand  # noqa: E402


def run(argv: list[str]) -> int:
    return run_subcommand("predict", argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
