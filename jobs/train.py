"""`ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/<recipe>.yaml [--set k=v ...]`

Same arguments and behaviour as `eco train` (parsed by pipeline.cli.build_parser). Storage and data paths in the
recipe must be absolute or URIs: a relative one would land in Ray's temporary copy of the working directory and is
refused, naming the key (docs/cluster.md, "Paths in jobs").
"""

import sys
from pathlib import Path

# The job's working directory (the uploaded repo) comes first, ahead of any installed copy of `pipeline`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_subcommand  # noqa: E402


def run(argv: list[str]) -> int:
    return run_subcommand("train", argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
