"""Provider API clients do not pile up: one per endpoint and key, at most a few, and a client
dropped from the pool is closed only once no stream uses it any more."""

from imgate_runner.providers.base import ChatMessage, ClientPool, Generation
from imgate_runner.providers.openai import OpenAIProvider
from tests.runner.conftest import openai_agent
from tests.support.openai_stub import ScriptedModel


class FakeClient:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


async def close(client: FakeClient) -> None:
    client.closed = True


async def test_the_pool_keeps_at_most_its_cap_and_closes_what_it_drops() -> None:
    pool: ClientPool[FakeClient] = ClientPool(close, max_clients=2)
    made: list[FakeClient] = []

    def create(name: str) -> FakeClient:
        made.append(FakeClient(name))
        return made[-1]

    for key in ("a", "b", "c", "d", "a"):
        async with pool.use(key, lambda key=key: create(key)):  # type: ignore[misc]
            pass
    assert len(pool) == 2
    assert [c.name for c in made if not c.closed] == ["d", "a"]
    await pool.close_all()
    assert all(c.closed for c in made)


async def test_a_client_in_use_is_closed_only_when_its_stream_ends() -> None:
    pool: ClientPool[FakeClient] = ClientPool(close, max_clients=1)
    async with pool.use("busy", lambda: FakeClient("busy")) as busy:
        async with pool.use("other", lambda: FakeClient("other")):
            assert not busy.closed, "a stream is still reading from it"
        assert not busy.closed
    assert busy.closed


async def test_many_keys_leave_the_provider_with_few_clients(scripted: tuple[ScriptedModel, str]) -> None:
    _, url = scripted
    provider = OpenAIProvider(max_clients=3)
    agent = openai_agent(url)
    for n in range(8):  # an agent whose key was changed again and again
        chunks = [
            c async for c in provider.stream(agent, f"key-{n}", [ChatMessage("user", "hi")], Generation())
        ]
        assert chunks
    assert len(provider._clients) == 3
    await provider.shutdown()
    assert len(provider._clients) == 0
