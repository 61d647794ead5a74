"""Print measurement rows for docs/results.yaml from finished run folders, so figures are copied, never typed.

    python scripts/results_rows.py outputs/train/<date>/<run> [more runs...] [--table NAME]

Paste the rows under `measurements:`, fill in `what` (and the table), then `metalearn-reproduce tables`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from metalearn.record import row_from_run

if __name__ == "__main__":
    args = sys.argv[1:]
    table = "TABLE"
    if "--table" in args:
        i = args.index("--table")
        table = args[i + 1]
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    rows = [row_from_run(Path(a), table) for a in args]
    print(yaml.safe_dump(rows, sort_keys=False, allow_unicode=True, width=120), end="")
