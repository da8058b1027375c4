"""What one run costs in database statements (counts, not times): with its agent known, the
stored-answer check and the history before the model, the conversation touched and the answer
inserted after it."""

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.messages import RunCompleted
from imgate_runner.service import RunExecutor
from tests.runner.conftest import Events, noop, openai_agent, setup_run
from tests.support.openai_stub import ScriptedModel


async def test_a_run_of_a_known_agent_costs_four_statements(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Any,
) -> None:
    _, url = scripted
    events = Events()
    executor: RunExecutor = make_executor(events)
    agent = openai_agent(url)
    first = await setup_run(sessions, agent, "hello")
    await executor.execute(first, noop)  # reads the agent
    second = await setup_run(sessions, None, "again", conversation=first.conversation_id)
    second = second.model_copy(update={"agent_id": first.agent_id})
    statements: list[str] = []

    def statement(_conn: Any, _cursor: Any, text: str, *_args: Any) -> None:
        if not text.startswith("BEGIN"):
            statements.append(" ".join(text.split()[:2]))

    engine = sessions.kw["bind"].sync_engine
    event.listen(engine, "before_cursor_execute", statement)
    try:
        await executor.execute(second, noop)
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    assert statements == ["SELECT messages.id,", "SELECT messages.id,", "UPDATE conversations", "INSERT INTO"]
    assert sum(isinstance(e, RunCompleted) for e in events) == 2
    executor.agents.clear()  # a change notice: the agent is read again
    assert executor.agents.get(first.agent_id or 0) is None
