"""Benchmarks that print figures beside a baseline measured in the same run.

Each service's figures come from its own module: connector.py (first visible token, card calls
per reply, memory with 100 channels, inbound translation), router.py and runner.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from connector import rows as connector_rows
from router import rows as router_rows
from runner import rows as runner_rows


def main() -> int:
    quick = "--quick" in sys.argv
    rows = connector_rows(quick=quick)
    rows += router_rows(quick=quick)
    rows += runner_rows(quick=quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'imgate':>10}  {'baseline':>10}  ratio")
    for name, a, b, ratio in rows:
        print(f"{name:<{width}}  {a:>10}  {b:>10}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
