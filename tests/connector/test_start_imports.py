"""What a connector process loads to start: none of the weight it never uses.

Each module below is installed in the workspace and would cost every connector megabytes (and
lark-oapi's API models seconds) if something pulled it in; docs/performance.md (figure 8) has
the figures. The test runs the connector's `__main__` as a process with a channel connected and
reads the modules it holds when it stops, so a lazy import at start counts too.
"""

import sys
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.secrets import SecretBox
from imgate_common.unused_imports import unused_modules
from tests.connector.sim import Sim, until
from tests.connector.stack import add_channel, new_channel_ids, process_env
from tools.devstack import LocalStack

NOT_AT_START = {
    "faststream": "the router's and the runner's consumer framework",
    "rich": "httpx's command-line client and structlog's pretty tracebacks",
    "click": "httpx's command-line client",
    "pygments": "httpx's command-line client",
    "aiohttp": "nats-py's websocket transport and the DingTalk SDK's client",
    "requests": "the platform SDKs' synchronous clients",
    "dingtalk_stream.stream": "the DingTalk SDK's client: the connector uses its frames only",
    "lark_oapi.api": "lark-oapi's API models (about 160 MB and 5 s): Feishu uses its frames only",
    # Only DingTalk channels here: Feishu's frames (about 9 MB) load at its first frame.
    "lark_oapi": "lark-oapi, of which Feishu channels load the frames",
}


# `python -m imgate_connector`, writing the names of its loaded modules to a file at exit.
RUN_AND_LIST_MODULES = """
import atexit, runpy, sys
def listed():
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(name for name, module in sys.modules.items() if module is not None))
atexit.register(listed)
runpy.run_module("imgate_connector", run_name="__main__", alter_sys=True)
"""


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


async def test_a_started_connector_imports_nothing_it_does_not_use(
    tmp_path: Path,
    imsim: str,
    private_nats: str,
    database_url: str,
    secret_keys: str,
    key_prefix: str,
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    http: httpx.AsyncClient,
) -> None:
    sim = await Sim.create(imsim, http)
    [channel] = new_channel_ids(1)
    await add_channel(db, box, channel, sim.app, sim.secret)
    env = process_env(
        nats_url=private_nats,
        database_url=database_url,
        prefix=key_prefix,
        secret_keys=secret_keys,
        imsim=imsim,
    )
    stack = LocalStack(tmp_path, log_dir=tmp_path / "logs")
    listing = tmp_path / "modules.txt"
    argv = [sys.executable, "-c", RUN_AND_LIST_MODULES, str(listing)]
    stack.spawn("connector", argv, {**env, "IMGATE_INSTANCE_ID": f"imports-{channel}"})

    async def connected() -> bool:
        return len(await sim.open_connections()) == 1

    try:
        await until(connected, within=30)
    finally:
        stack.stop()
    imported = set(listing.read_text().splitlines())
    # The listing is of a started connector: every adapter, DingTalk's SDK frames, the websocket.
    assert {
        "imgate_connector.platforms.dingtalk.adapter",
        "imgate_connector.platforms.feishu.adapter",
        "dingtalk_stream.frames",
    } <= imported
    assert "websockets.asyncio.client" in imported
    loaded = {p: why for p, why in NOT_AT_START.items() if any(within(m, p) for m in imported)}
    assert loaded == {}


def test_aiohttp_stays_importable_when_nats_is_reached_over_a_websocket() -> None:
    assert "aiohttp" in unused_modules({"NATS_URL": "nats://127.0.0.1:4222"})
    assert "aiohttp" not in unused_modules({"NATS_URL": "wss://nats.example.com:443"})
    assert "aiohttp" not in unused_modules({"imgate_nats_url": "nats://a:4222,WS://b:8080"})
    assert {"httpx._main", "rich"} <= set(unused_modules({}))
