"""The prompt for one run: system prompt, then as many recent turns as the agent's budget allows."""

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Agent, Message
from imgate_runner.providers.base import ChatMessage

# Rough size of a token in characters; good enough to keep a prompt inside the context window.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def history_limit(agent: Agent | None, most: int) -> int:
    """Messages worth reading for a run: the prompt keeps at most `max_turns` user turns, each
    with its answer, plus one (an answer whose question fell off); never more than `most`."""
    turns = agent.max_turns if agent is not None else 1
    return max(1, min(most, 2 * turns + 2))


async def load_history(
    session: AsyncSession, conversation_id: str, up_to_message_id: int, limit: int
) -> list[Message]:
    """The newest `limit` messages up to the run's own, oldest first: a run reads a bounded
    slice of its conversation however long the conversation grew."""
    query = (
        select(Message)
        .where(Message.conversation_id == conversation_id, col(Message.id) <= up_to_message_id)
        .order_by(col(Message.id).desc())
        .limit(limit)
    )
    return list(reversed((await session.exec(query)).all()))


def build_prompt(agent: Agent, history: list[Message]) -> list[ChatMessage]:
    """Keep the system prompt and the newest turns; drop the oldest first when over budget."""
    system = [ChatMessage("system", agent.system_prompt)] if agent.system_prompt else []
    budget = agent.max_prompt_tokens - sum(estimate_tokens(m.content) for m in system)
    kept: list[ChatMessage] = []
    user_turns = 0
    for message in reversed(history):
        cost = estimate_tokens(message.content)
        if kept and (budget - cost < 0 or user_turns >= agent.max_turns):
            break
        kept.append(ChatMessage(message.role, message.content))
        budget -= cost
        user_turns += message.role == "user"
    # A conversation must not start with an orphaned assistant turn.
    while kept and kept[-1].role == "assistant":
        kept.pop()
    return system + list(reversed(kept))
