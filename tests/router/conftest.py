"""The router against real Redis and a migrated database (the bus publish captured), and real
identity back-ends for the mapper tests: an OpenLDAP slapd and a small HTTP service."""

import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import INBOUND_PARTITIONS, RUNS_STREAM
from imgate_common.consumers import ensure_consumer, router_consumer_spec
from imgate_common.conversation_queue import ConversationQueue
from imgate_common.db.models import Agent, Channel
from imgate_common.messages import InboundMessage, RunRequest
from imgate_common.publish import durable_publisher
from imgate_common.secrets import SecretBox
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_router.main import subscribe
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings
from tests.support.nats_server import fresh_streams
from tests.support.openai_stub import free_port

LDAP_BASE = "dc=example,dc=com"
LDAP_ADMIN = "cn=admin,dc=example,dc=com"
LDAP_PASSWORD = "directory-secret"
PEOPLE = """
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: uid=zhangsan,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: zhangsan
cn: Zhang San
sn: Zhang
mail: zhangsan@example.com
employeeNumber: manager4352
mobile: 13800000001

dn: uid=lisi,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: lisi
cn: Li Si
sn: Li
mail: lisi@example.com
employeeNumber: 0142345
"""


@dataclass
class Slapd:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    binary = shutil.which("slapd") or "/usr/sbin/slapd"
    if not Path(binary).exists():
        pytest.fail("slapd is not installed: `apt-get install slapd` (make test does it)")
    root = Path(tmp_path_factory.mktemp("slapd"))
    (root / "db").mkdir()
    config = root / "slapd.conf"
    config.write_text(
        "\n".join(
            [
                "include /etc/ldap/schema/core.schema",
                "include /etc/ldap/schema/cosine.schema",
                "include /etc/ldap/schema/inetorgperson.schema",
                "modulepath /usr/lib/ldap",
                "moduleload back_mdb",
                f"pidfile {root}/slapd.pid",
                "database mdb",
                "maxsize 10485760",
                f'suffix "{LDAP_BASE}"',
                f'rootdn "{LDAP_ADMIN}"',
                f"rootpw {LDAP_PASSWORD}",
                f"directory {root}/db",
                "",
            ]
        )
    )
    (root / "people.ldif").write_text(PEOPLE.lstrip())
    subprocess.run(
        ["/usr/sbin/slapadd", "-f", str(config), "-l", str(root / "people.ldif")],
        check=True,
        capture_output=True,
    )
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "-f", str(config), "-h", f"{url}/", "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("slapd did not start")
            time.sleep(0.1)
    yield Slapd(url, process)
    process.terminate()
    process.wait(10)


@dataclass
class IdentityService:
    """An ERP-like lookup: staff id → person; counts requests; can be made slow or broken."""

    url: str = ""
    people: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    delay_s: float = 0.0
    status: int | None = None
    answers: list[Any] = field(default_factory=list)  # JSON bodies to answer with instead, in turn


@pytest.fixture(scope="session")
def identity_service() -> Iterator[IdentityService]:
    service = IdentityService(people={"manager4352": {"username": "zs", "email": "zs@corp.example"}})
    app = FastAPI()

    @app.post("/people/lookup")
    async def lookup(request: Request) -> Any:
        import asyncio

        body = await request.json()
        service.requests.append(body)
        service.headers.append(dict(request.headers))
        await asyncio.sleep(service.delay_s)
        if service.status is not None:
            return JSONResponse({"error": "broken"}, status_code=service.status)
        if service.answers:
            return JSONResponse(service.answers.pop(0))
        person = service.people.get(body.get("employee_id") or "")
        if person is None:
            return JSONResponse({"found": False}, status_code=404)
        return person

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    service.url = f"http://127.0.0.1:{port}/people/lookup"
    yield service
    server.should_exit = True
    thread.join(5)


FIXTURES = Path(__file__).parent.parent / "fixtures" / "dingtalk"


def inbound(
    channel_id: int, msg_id: str, text: str = "hello", fixture: str = "text_single"
) -> InboundMessage:
    data: dict[str, Any] = json.loads((FIXTURES / f"{fixture}.json").read_text())
    data["msgId"] = msg_id
    if "text" in data:
        data["text"] = {"content": text}
    return translate(data, channel_id, None)


class Published(list[tuple[str, str, BaseModel, str]]):
    async def __call__(self, subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        self.append((subject, stream, model, msg_id))

    def of(self, kind: type[BaseModel]) -> list[Any]:
        return [m for _, _, m, _ in self if isinstance(m, kind)]


async def make_channel(sessions: async_sessionmaker[AsyncSession], **fields: Any) -> int:
    """An agent and a channel answered by it; returns the channel's id."""
    async with sessions() as session:
        agent = Agent(name="a", provider="local")
        session.add(agent)
        await session.flush()
        channel = Channel(name="c", platform="dingtalk", default_agent_id=agent.id, **fields)
        session.add(channel)
        await session.commit()
        assert channel.id is not None
        return channel.id


@pytest.fixture
async def channel_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    return await make_channel(sessions)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def finish(redis_client: Redis, key_prefix: str, published: Published) -> Any:
    """What a runner does when a run ends: hand the conversation to the next queued run."""
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)

    async def done(run: RunRequest) -> None:
        async def publish(following: RunRequest) -> None:
            published.append((f"agent.run.{following.channel_id}", RUNS_STREAM, following, following.run_id))

        await queue.hand_over(run.run_id, run.conversation_id, publish)

    return done


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def cancelled() -> list[str]:
    return []


@pytest.fixture
def router(
    sessions: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    key_prefix: str,
    published: Published,
    cancelled: list[str],
    tmp_path: Path,
    http_client: httpx.AsyncClient,
) -> InboundRouter:
    async def cancel(run_id: str) -> None:
        cancelled.append(run_id)

    settings = RouterSettings(redis_prefix=key_prefix, data_dir=tmp_path)
    return InboundRouter(
        settings, sessions, redis_client, published, cancel, http_client, SecretBox.from_settings(settings)
    )


@pytest.fixture
async def js(private_nats: str) -> AsyncIterator[JetStreamContext]:
    """Fresh streams on a private nats-server, with the router's partition consumers."""
    async with fresh_streams(private_nats) as js:
        for partition in range(INBOUND_PARTITIONS):
            await ensure_consumer(js, router_consumer_spec(partition))
        yield js


def bus_router(
    nats_url: str,
    sessions: async_sessionmaker[AsyncSession],
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
    http: httpx.AsyncClient,
) -> tuple[NatsBroker, InboundRouter]:
    """A router subscribed to every partition as it runs (FastStream); start the broker."""
    settings = RouterSettings(redis_prefix=key_prefix, data_dir=tmp_path)
    broker = NatsBroker(nats_url)
    publish = durable_publisher(broker)

    async def cancel(run_id: str) -> None:
        return None

    router = InboundRouter(
        settings, sessions, redis, publish, cancel, http, SecretBox.from_settings(settings)
    )
    subscribe(broker, router, publish)
    return broker, router
