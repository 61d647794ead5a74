"""Print results-table rows (docs/results.md) from finished run folders, so table numbers are copied, never typed.

    python scripts/results_rows.py outputs/train/<date>/<run> [more runs...]
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def row(run: Path) -> str:
    s = json.loads((run / "summary.json").read_text())
    cells = [f"{100 * t['accuracy']:.2f} ± {100 * t['ci95']:.2f}%" for t in s.get("test", {}).values()]
    command = "metalearn-train " + " ".join(shlex.quote(o) for o in s.get("overrides", []) if not o.startswith("run_dir="))
    minutes = f"{s.get('wall_time_s', 0) / 60:.1f} min"
    tags = ", ".join(s.get("test", {}))
    return f"| {s['method']} | `{command.strip()}` | {' | '.join(cells)} | {minutes} | <!-- {tags}; {s['status']} -->"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        print(row(Path(arg)))
