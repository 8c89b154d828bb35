"""`ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint C --manifest M [--clips K] [--crops 3]`

Same arguments and behaviour as `eco evaluate` (parsed by pipeline.cli.build_parser).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
