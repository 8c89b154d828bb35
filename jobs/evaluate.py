"""`ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint C --manifest M [--clips K] [--crops 3]`

Same arguments and behaviour as `eco evaluate` (parsed by pipeline.cli.build_parser); --checkpoint, --manifest and
--out must be absolute paths or URIs (docs/cluster.md, "Paths in jobs").
"""

import sys
from pathlib import Path

# The job's working directory (the uploaded repo) comes first, ahead of any installed copy of `pipeline`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_subcommand  # noqa: E402


def run(argv: list[str]) -> int:
    return run_subcommand("evaluate", argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
