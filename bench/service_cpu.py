"""CPU milliseconds per answered message, per service: the throughput load of issue 14, alone.

    python bench/service_cpu.py                       # 20 msg/s for 20 s over 10 channels, PostgreSQL
    python bench/service_cpu.py --rate 20 --seconds 20 --channels 10 --database sqlite
    python bench/service_cpu.py --profile router      # py-spy record of the router meanwhile

The fleet (tools/fleet.py) runs against imsim with 5 ms card latency and no card limit, and a
quick model (first token after 50 ms, 21 tokens at 400/s); each message opens a conversation
of its own, and every user has been answered once before the timed part (known users). CPU is
user + system time from /proc of each service's process tree over the sending window plus
the time until the last answer, divided by the answers. Prints one JSON object.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from e2e import Sender, wait_model_idle  # noqa: E402
from measure import CpuMeter, load_average, percentile  # noqa: E402

from tools.fleet import Fleet, FleetConfig, collect_outcomes  # noqa: E402

SERVICES = ("connector", "router", "agent-runner")


def _roots(fleet: Fleet, name: str) -> list[int]:
    return [p.popen.pid for p in fleet.stack.processes if p.name == name or p.name.startswith(name + "-")]


def measure(args: argparse.Namespace) -> dict[str, object]:
    config = FleetConfig(
        channels=args.channels,
        database=args.database,
        card_latency_ms=5,
        model_ttft_ms=50,
        model_tokens_per_s=400,
        answer_tokens=21,
        extra_env={"RUNNER_MAX_CONCURRENT_RUNS": "64"},
    )
    count = round(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp, Fleet(config, Path(tmp)) as fleet:
        sender = Sender(fleet.imsim)
        try:
            apps = fleet.client_ids
            warm = sender.drive(apps, len(apps) * args.users, 20.0, args.users, "w")
            collect_outcomes(fleet.imsim, warm, timeout_s=60, settle_s=0)
            wait_model_idle(fleet, quiet_s=1.0)
            meter = CpuMeter({name: _roots(fleet, name) for name in SERVICES})
            profiler = None
            if args.profile:
                pid = _roots(fleet, args.profile)[0]
                profiler = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "100",
                     "-f", args.format, "-o", args.output, "-d", str(int(args.seconds + 2))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            load = load_average()
            began = time.monotonic()
            meter.start()
            sent = sender.drive(apps, count, args.rate, args.users, "i")
            report = collect_outcomes(fleet.imsim, sent, timeout_s=60, settle_s=0.5)
            cpu = meter.stop()
            elapsed = time.monotonic() - began
            if profiler is not None:
                profiler.wait(timeout=120)
        finally:
            sender.close()
        answered = sum(1 for o in report.outcomes if o.answers)
        finals = [(o.final_at - o.sent.sent_at) * 1000 for o in report.outcomes if o.final_at is not None]
        if args.keep_logs:
            shutil.copytree(fleet.log_dir, args.keep_logs, dirs_exist_ok=True)
    per_answer = {k: round(v * elapsed * 1000 / max(answered, 1), 1) for k, v in cpu.items()}
    per_answer["services"] = round(sum(per_answer[s] for s in SERVICES), 1)
    return {
        "rate": args.rate,
        "sent": count,
        "answered": answered,
        "lost": len(report.lost),
        "doubled": len(report.doubled),
        "final_p50_ms": round(percentile(finals, 0.5)),
        "final_p99_ms": round(percentile(finals, 0.99)),
        "window_s": round(elapsed, 1),
        "cpu_ms_per_answer": per_answer,
        "load_before": load,
        "load_after": load_average(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--users", type=int, default=10, help="per channel")
    parser.add_argument("--database", default="postgres")
    parser.add_argument("--profile", choices=SERVICES, help="py-spy record this service meanwhile")
    parser.add_argument("--format", default="speedscope", help="py-spy's output format")
    parser.add_argument("--output", default="profile.json")
    parser.add_argument("--keep-logs", type=Path)
    print(json.dumps(measure(parser.parse_args()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
