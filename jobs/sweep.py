"""`ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/<recipe>.yaml
--space jobs/configs/sweeps/<space>.yaml [--name NAME] [--set k=v ...]`

Same arguments and behaviour as `eco sweep` (parsed by pipeline.cli.build_parser). Submitting the same sweep name
again resumes it.
"""

import sys
from pathlib import Path

# The job's working directory (the uploaded repo) comes first, ahead of any installed copy of `pipeline`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_subcommand  # noqa: E402


def run(argv: list[str]) -> int:
    return run_subcommand("sweep", argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
