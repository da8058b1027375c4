"""The benchmark suite (`make bench`): imgate's figures beside a baseline measured in the same run.

    python bench/run.py                # the full suite (about 15 minutes on 2 cores)
    python bench/run.py --smoke        # tiny counts, one rate: every code path in 1-2 minutes
    python bench/run.py --no-services  # without the per-service section
    python bench/run.py --set rates=2,10 --set database=postgres   # or BENCH_RATES=2,10 …

End to end (e2e.py): the four services as processes against imsim and modelsim, beside a bot
written the way the dingtalk-stream SDK's examples do it (baseline_bot.py), and imgate on Feishu
beside imgate on DingTalk. Per service
(connector.py, router.py, runner.py): each service alone against its own minimal baseline.
The table goes to stdout, progress to stderr, and everything to bench/results/<UTC time>.json
and bench/results/latest.json (the smoke writes …-smoke.json and latest-smoke.json).
Figures print; they never fail the run.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import e2e  # noqa: E402
from measure import load_average, machine  # noqa: E402
from report import Row, rows_table, table, utc_stamp, write_results  # noqa: E402

RESULTS = BENCH / "results"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _convert(value: str, like: Any) -> Any:
    if isinstance(like, list):
        return [float(v) for v in value.split(",") if v.strip()]
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if like is None:  # optional numbers (card_qps_budget)
        return None if value.lower() in ("", "none", "null") else float(value)
    return value


def parameters(smoke: bool, overrides: list[str]) -> e2e.Params:
    """Defaults (or the smoke's), then BENCH_<NAME> variables, then --set NAME=VALUE."""
    params = e2e.Params.smoke() if smoke else e2e.Params()
    names = {f.name for f in dataclasses.fields(params)}
    pairs = [
        (n, os.environ[f"BENCH_{n.upper()}"]) for n in sorted(names) if f"BENCH_{n.upper()}" in os.environ
    ]
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in names:
            raise SystemExit(f"unknown parameter {name!r}; known: {', '.join(sorted(names))}")
        pairs.append((name, value))
    for name, value in pairs:
        setattr(params, name, _convert(value, getattr(params, name)))
    return params


def service_rows(quick: bool) -> list[Row]:
    from connector import rows as connector_rows
    from router import rows as router_rows
    from runner import rows as runner_rows

    rows = connector_rows(quick=quick)
    rows += router_rows(quick=quick)
    rows += runner_rows(quick=quick)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, one rate: every code path")
    services = parser.add_mutually_exclusive_group()
    services.add_argument("--services", dest="services", action="store_true", default=None)
    services.add_argument("--no-services", dest="services", action="store_false")
    parser.add_argument("--quick", action="store_true", help="the per-service section's short version")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep-logs", action="store_true", help="copy every process's log beside the results"
    )
    args = parser.parse_args(argv)
    with_services = (not args.smoke) if args.services is None else args.services

    params = parameters(args.smoke, args.set)
    # The services' own loggers go to their log files; keep this process's console for the table.
    logging.basicConfig(level=logging.WARNING)
    started_at, began, load_before = utc_stamp(), time.monotonic(), load_average()
    log(
        f"imgate benchmarks ({'smoke' if args.smoke else 'full'}), "
        f"parameters: {json.dumps(dataclasses.asdict(params))}"
    )
    logs_to = args.results_dir / f"logs-{started_at}" if args.keep_logs else None
    figures, raw = e2e.run(params, log, logs_to)
    rows: list[Row] = []
    if with_services:
        log("per-service section")
        rows = service_rows(quick=args.quick or args.smoke)
    duration = time.monotonic() - began

    print()
    print(table(figures))
    if rows:
        print()
        print(rows_table(rows))
    info = machine()
    info["load_average_before"], info["load_average_after"] = load_before, load_average()
    if load_before[0] > float(info["cores"] or 1) / 2:  # type: ignore[arg-type]
        print(f"note: the machine was busy before the run (load average {load_before[0]:.1f})")
    print(
        f"\n{info['cores']} cores, {info['cpu_model']}, Python {info['python']}; {duration:.0f} s"
        " (ratio = imgate / baseline; 'base 0.8s' updates the card every 0.8 s;"
        " rows 9: imgate on Feishu / imgate on DingTalk, no Feishu SDK-pattern baseline)"
    )
    payload = {
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "mode": "smoke" if args.smoke else "full",
        "machine": info,
        "parameters": dataclasses.asdict(params),
        "figures": [f.to_json() for f in figures],
        "services": [{"figure": r[0], "ours": r[1], "baseline": r[2], "ratio": r[3]} for r in rows],
        "raw": raw,
    }
    path = write_results(payload, args.results_dir, "smoke" if args.smoke else "")
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
