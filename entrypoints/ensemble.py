"""MLproject entry point `ensemble`: the same code as `ltexp ensemble`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from ltexp.cli import main

if __name__ == "__main__":
    sys.exit(main(["ensemble", *sys.argv[1:]]))
