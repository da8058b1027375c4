"""What happens to one inbound message: dedup, identity, commands, conversation, run request."""

import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC

import httpx
import structlog
from opentelemetry import trace
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common import telemetry
from imgate_common.bus import REPLIES_STREAM, RUNS_STREAM, reply_subject, run_subject
from imgate_common.commands import Command, parse_command
from imgate_common.config_cache import ConfigCache, ConfigCaches
from imgate_common.consume import Failure
from imgate_common.conversation_queue import Admission, ConversationQueue
from imgate_common.db.models import Agent, Channel, Message, utcnow
from imgate_common.errors import FailureCategory
from imgate_common.messages import InboundMessage, MessageKind, Notice, RunFailed, RunQueued, RunRequest
from imgate_common.messages import run_id_for as message_run_id
from imgate_common.publish import Publish
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_common.wording import failure_sentence, say
from imgate_router.conversations import ConversationStore, scope_key
from imgate_router.identity import AutoUserMapper, IdentityResolver, NotRegistered
from imgate_router.mappers import MapperUnavailable
from imgate_router.metrics import (
    DEDUP_HITS,
    MESSAGES,
    QUEUE_ADMISSIONS,
    QUEUE_POSITION,
    RATE_LIMITED,
    ROUTE_SECONDS,
    type_label,
)
from imgate_router.rate_limit import InboundRateLimiter, Limited, RateLimits, Seen
from imgate_router.settings import RouterSettings

log = structlog.get_logger()

# The failed event of a message the router gave up on comes after anything a runner may have
# sent for the same run.
GAVE_UP_SEQ = 2_000_000


def channel_language(channel: Channel) -> str:
    return channel.language or "zh-CN"


def _gave_up_sentence(failure: Failure, language: str) -> str:
    """A configuration mistake says so; anything else that kept failing was set aside."""
    if failure.category == FailureCategory.MISCONFIGURED:
        return failure_sentence(FailureCategory.MISCONFIGURED, language)
    return say("gave_up", language)


def _runnable(message: InboundMessage) -> bool:
    """Whether the message can be answered at all (else the user is told it is unsupported)."""
    return message.kind != MessageKind.UNSUPPORTED and bool(message.text or message.attachments)


def run_id_for(message: InboundMessage) -> str:
    """The message's run; an operator's replay of it is a run of its own (a new answer)."""
    return message_run_id(message.platform, message.channel_id, message.message_id, message.replay)


class InboundRouter:
    def __init__(
        self,
        settings: RouterSettings,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis,
        publish: Publish,
        cancel: Callable[[str], Awaitable[None]],
        http: httpx.AsyncClient,
        box: SecretBox,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._redis = redis
        self._publish = publish
        self._cancel = cancel
        # Channels as routing reads them (and the identities' users, in the resolver), from
        # memory: emptied by `config_changed` when an administrator changes anything.
        self._channels: ConfigCache[int, Channel] = ConfigCache()
        self._users = IdentityResolver(
            redis,
            settings.redis_prefix,
            box,
            http,
            AutoUserMapper(settings.auto_email_domain),
            settings.identity_cache_ttl_s,
            settings.ldap_timeout_s,
        )
        self._channel_status = ChannelStatusStore(redis, settings.redis_prefix)
        self._conversations = ConversationStore(settings.idle_timeout_s)
        self._queue = ConversationQueue(redis, settings.redis_prefix, settings.conversation_active_ttl_s)
        self._rate = InboundRateLimiter(
            redis,
            settings.redis_prefix,
            RateLimits(
                settings.rate_window_s, settings.rate_user_per_window, settings.rate_channel_per_window
            ),
        )
        self._runs_requested = 0
        self.caches = ConfigCaches(self._channels, self._users.users, self._users.mappings)

    def _seen_key(self, message: InboundMessage) -> str:
        prefix = self._settings.redis_prefix
        key = f"{prefix}:seen:{message.platform}:{message.channel_id}:{message.message_id}"
        # A replay is routed again although its message was seen (it may have been, when the
        # run died in the runner); each replay is seen once.
        return f"{key}:replay:{message.replay}" if message.replay else key

    async def handle(self, message: InboundMessage, redelivered: bool = True) -> None:
        """Route one message. `redelivered`: the bus may have handed it out before (then an
        earlier try may have stored its turn); False only on a first delivery."""
        run_id = run_id_for(message)
        span = trace.get_current_span()  # the bus consumer's span, continuing the message's trace
        if span.is_recording():
            span.set_attributes(
                {
                    telemetry.CHANNEL_ID: message.channel_id,
                    telemetry.PLATFORM: message.platform,
                    telemetry.CONVERSATION_ID: message.target.conversation_id,
                    telemetry.MESSAGE_ID: message.message_id,
                    telemetry.MESSAGE_TYPE: message.platform_type,
                    telemetry.RUN_ID: run_id,
                }
            )
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(
            channel_id=message.channel_id, msg_id=message.message_id, run_id=run_id
        ):
            bound = log.bind()
            # Seen already, and the rate limits, in one round trip. A /stop is never limited (a
            # flood can always be stopped); a message nothing is run for is not counted.
            count = parse_command(message.text) != Command.STOP and _runnable(message)
            first = await self._rate.seen_or_take(message, self._seen_key(message), count)
            if first == Seen.SEEN:
                bound.info("inbound_duplicate_dropped")
                span.add_event("dedup_hit")
                DEDUP_HITS.labels(message.platform).inc()
                return
            if message.replay:
                bound.info("inbound_replayed", replay=message.replay)
            result = await self._route(message, bound, first, redelivered)
            self._chaos_exit(result)
            # Marked only once everything above is durable: a crash before this is redelivered.
            await self._redis.set(self._seen_key(message), "1", ex=self._settings.dedup_ttl_s)
        span.set_attribute("imgate.route.result", result)
        MESSAGES.labels(message.platform, type_label(message.platform_type), result).inc()
        ROUTE_SECONDS.observe(time.perf_counter() - started)

    async def _channel(self, session: AsyncSession, channel_id: int) -> Channel | None:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = await session.get(Channel, channel_id)
            if channel is not None:
                session.expunge(channel)  # read only, shared by every message of the channel
                self._channels.put(channel_id, channel)
        return channel

    def _chaos_exit(self, result: str) -> None:
        """The chaos scenario's crash between publishing a run and marking its message seen."""
        every = self._settings.chaos_exit_every_n_runs
        if every <= 0 or result != "run_requested":
            return
        self._runs_requested += 1
        if self._runs_requested % every == 0:
            log.warning("router_chaos_exit")
            os._exit(3)

    async def give_up(self, message: InboundMessage | None, failure: Failure) -> None:
        """The consumer gave up on `message` (already dead-lettered): end the user's card with
        a failure sentence, show the error on the channel, and free its conversation's turn."""
        if message is None:
            return  # unreadable: no one to tell (the dead letter and the metric say it)
        run_id = run_id_for(message)
        bound = log.bind(channel_id=message.channel_id, run_id=run_id)
        event = RunFailed(
            run_id=run_id,
            channel_id=message.channel_id,
            target=message.target,
            seq=GAVE_UP_SEQ,
            category=failure.category,
            text=_gave_up_sentence(failure, await self._language(message.channel_id)),
        )
        await self._publish(
            reply_subject(message.channel_id, run_id), REPLIES_STREAM, event, f"{run_id}:gave-up"
        )
        try:
            await self._channel_status.record_error(message.channel_id, "router", failure.describe())
            await self._release(run_id)
        except Exception as exc:  # the dead letter and the user's answer are out already
            bound.warning("give_up_cleanup_failed", error=str(exc))

    async def _language(self, channel_id: int) -> str:
        try:
            async with self._sessions() as session:
                channel = await session.get(Channel, channel_id)
        except Exception:  # the database may be why we gave up
            return "zh-CN"
        return channel_language(channel) if channel else "zh-CN"

    async def _release(self, run_id: str) -> None:
        """A run the router admitted but gave up on must not keep its conversation's turn."""
        async with self._sessions() as session:
            stored = (
                await session.exec(select(Message).where(Message.run_id == run_id, Message.role == "user"))
            ).first()
        if stored is not None:
            await self._queue.release(run_id, stored.conversation_id, self._publish_run)

    async def sweep(self) -> None:
        """Start the first waiting run of every conversation whose lock expired."""
        await self._queue.sweep(self._publish_run)

    async def _publish_run(self, request: RunRequest) -> None:
        await self._publish(run_subject(request.channel_id), RUNS_STREAM, request, request.run_id)

    async def _route(
        self,
        message: InboundMessage,
        bound: structlog.BoundLogger,
        limited: Limited | None,
        redelivered: bool,
    ) -> str:
        """Routes one message; returns what became of it (a metric label)."""
        run_id = run_id_for(message)
        async with self._sessions() as session:
            channel = await self._channel(session, message.channel_id)
            if channel is None:
                bound.warning("inbound_for_unknown_channel")
                return "unknown_channel"
            if not _runnable(message):
                bound.info("inbound_unsupported", platform_type=message.platform_type)
                unsupported = failure_sentence(FailureCategory.UNSUPPORTED_MESSAGE, channel_language(channel))
                await self._notice(message, run_id, unsupported)
                return "unsupported"
            assert channel.id is not None
            language = channel_language(channel)
            if limited is not None:
                bound.warning("inbound_rate_limited", limit=limited.value, sender=message.sender.id)
                RATE_LIMITED.labels(limited.value).inc()
                key = "rate_limited_user" if limited == Limited.USER else "rate_limited_channel"
                await self._notice(message, run_id, say(key, language))
                return "rate_limited"
            try:
                resolved = await self._users.resolve(session, channel, message)
            except NotRegistered:
                bound.info("sender_not_registered", sender=message.sender.id)
                await self._notice(message, run_id, say("not_registered", language))
                return "not_registered"
            except MapperUnavailable as exc:
                # Answered and visible to operators; the user can send again when it is back.
                bound.warning("identity_lookup_failed", error=str(exc))
                await self._channel_status.record_error(channel.id, "identity", str(exc))
                await self._notice(message, run_id, say("identity_down", language))
                return "identity_failed"
            key = scope_key(message, channel.session_scope)
            command = parse_command(message.text)
            if command == Command.NEW:
                await self._conversations.close(session, channel.id, key)
                await session.commit()
                bound.info("conversation_reset", user_id=resolved.id)
                await self._notice(message, run_id, say("new", language))
                return "command_new"
            if command == Command.STOP:
                current = await self._conversations.current(session, channel.id, key)
                await session.commit()
                running = await self._queue.active(current.id) if current else None
                if running is None:
                    await self._notice(message, run_id, say("stop_nothing", language))
                else:
                    bound.info("run_stop_requested", run_id=running)
                    await self._cancel(running)
                return "command_stop"
            if command == Command.STATUS:
                text = await self._status(session, channel, key, language)
                await session.commit()
                await self._notice(message, run_id, text)
                return "command_status"
            if command == Command.HELP:
                await session.commit()
                await self._notice(message, run_id, say("help", language))
                return "command_help"
            existing = None
            if redelivered or message.replay:
                # Only an earlier try can have stored this turn. On a first delivery the look is
                # skipped: should a turn exist all the same, the insert below meets the unique
                # (run_id, role), fails, and the message comes back as a redelivery.
                existing = (
                    await session.exec(
                        select(Message).where(Message.run_id == run_id, Message.role == "user")
                    )
                ).first()
            if existing is None and message.replay:
                existing = await self._unanswered_turn(session, message, run_id)
            if existing is not None:  # redelivered: the turn is stored, keep its conversation
                conversation_id = existing.conversation_id
            else:
                conversation_id, reopened = await self._conversations.open(
                    session, channel.id, key, resolved.id
                )
                if reopened:
                    bound.info("conversation_idle_reopened", conversation_id=conversation_id)
                    # Its own id: the answer's card stays the answer's.
                    await self._notice(message, f"{run_id}:idle", say("idle", language))
            user_message = existing or Message(
                conversation_id=conversation_id,
                role="user",
                content=message.text or f"[{message.platform_type}]",
                run_id=run_id,
                platform_message_id=message.message_id,
            )
            session.add(user_message)
            await session.commit()
            self._users.remember(channel, message, resolved)
            assert user_message.id is not None
            request = RunRequest(
                run_id=run_id,
                channel_id=channel.id,
                conversation_id=conversation_id,
                agent_id=channel.default_agent_id,
                user_id=resolved.id,
                user_message_id=user_message.id,
                text=message.text,
                target=message.target,
                attachments=message.attachments,
                # A queued run starts later, from another process: it keeps this message's trace.
                trace_context=telemetry.carrier(),
                replay=message.replay,
                language=language,
            )
        trace.get_current_span().set_attribute(telemetry.CONVERSATION_ID, conversation_id)
        return await self._admit(message, request, user_message.id, bound, language)

    @staticmethod
    async def _unanswered_turn(session: AsyncSession, message: InboundMessage, run_id: str) -> Message | None:
        """A replay's turn stored by an earlier attempt that was never answered (the router gave
        up after storing it): it becomes the replay's, so the history holds the message once
        and the answer goes to its conversation."""
        earlier = [
            message_run_id(message.platform, message.channel_id, message.message_id, n)
            for n in range(message.replay)
        ]
        rows = (await session.exec(select(Message).where(col(Message.run_id).in_(earlier)))).all()
        answered = {m.run_id for m in rows if m.role == "assistant"}
        turns = [m for m in rows if m.role == "user" and m.run_id not in answered]
        if not turns:
            return None
        turn = max(turns, key=lambda m: m.id or 0)
        turn.run_id = run_id
        return turn

    async def _admit(
        self,
        message: InboundMessage,
        request: RunRequest,
        message_id: int,
        bound: structlog.BoundLogger,
        language: str,
    ) -> str:
        admitted = await self._queue.admit(request, self._settings.queue_max_depth)
        span = trace.get_current_span()
        span.add_event(
            "queue_admission", {"outcome": admitted.admission.value, "position": admitted.position or 0}
        )
        QUEUE_ADMISSIONS.labels(admitted.admission.value).inc()
        if admitted.admission == Admission.START:
            await self._publish_run(request)
            bound.info("run_requested", run_id=request.run_id, conversation_id=request.conversation_id)
            return "run_requested"
        if admitted.admission == Admission.FINISHED:
            # Redelivered after its run was answered (the router stopped before marking it seen).
            bound.info("inbound_run_already_finished", run_id=request.run_id)
            return "duplicate_finished"
        # The conversation's lock may have expired with runs waiting: start the first of them.
        await self._queue.promote(request.conversation_id, self._publish_run)
        if admitted.admission == Admission.QUEUED:
            QUEUE_POSITION.observe(admitted.position or 0)
            queued = RunQueued.of(request, admitted.position)
            subject = reply_subject(request.channel_id, request.run_id)
            await self._publish(subject, REPLIES_STREAM, queued, f"{request.run_id}:queued")
            bound.info("run_queued", run_id=request.run_id, position=admitted.position)
            return "run_queued"
        # Not kept: the user is asked to send it again once the answers caught up.
        async with self._sessions() as session:
            stored = await session.get(Message, message_id)
            if stored is not None:
                await session.delete(stored)
                await session.commit()
        bound.warning("run_refused_queue_full", conversation_id=request.conversation_id)
        await self._notice(message, request.run_id, say("queue_full", language))
        return "queue_full"

    async def _status(self, session: AsyncSession, channel: Channel, key: str, language: str) -> str:
        agent = await session.get(Agent, channel.default_agent_id) if channel.default_agent_id else None
        conversation = await self._conversations.current(session, channel.id or 0, key)
        if conversation is None:
            age, turns, queued = say("no_conversation", language), 0, 0
        else:
            opened = conversation.opened_at
            opened = opened.replace(tzinfo=UTC) if opened.tzinfo is None else opened
            age = say("minutes", language, n=int((utcnow() - opened).total_seconds() // 60))
            turns = len(
                (
                    await session.exec(
                        select(Message.id).where(
                            Message.conversation_id == conversation.id, Message.role == "user"
                        )
                    )
                ).all()
            )
            queued = await self._queue.waiting(conversation.id)
        return say(
            "status",
            language,
            agent=agent.name if agent else say("no_agent", language),
            model=f"{agent.provider}/{agent.model}" if agent else "-",
            age=age,
            turns=turns,
            queued=queued,
        )

    async def _notice(self, message: InboundMessage, run_id: str, text: str) -> None:
        notice = Notice(run_id=run_id, channel_id=message.channel_id, target=message.target, text=text)
        await self._publish(
            reply_subject(message.channel_id, run_id), REPLIES_STREAM, notice, f"{run_id}:notice"
        )
