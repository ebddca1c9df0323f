"""Write the README's family table from the family registry (`xattr.commands.families`).

python tools/family_table.py          # rewrite README.md between the markers
python tools/family_table.py --check  # exit 1 if README.md's table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xattr.commands.families import with_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = ap.parse_args()
    text = README.read_text()
    fresh = with_table(text)
    if args.check:
        if fresh != text:
            print("README.md's family table is stale: run python tools/family_table.py")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
