"""A toy second platform for tests of the platform seam: its bot echoes every message at once."""

from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import APIRouter

from imsim.identifiers import new_uuid
from imsim.platform import (
    AppSummary,
    ChatSummary,
    Injected,
    NewApp,
    SimPlatform,
    UnknownApp,
    UserMessage,
)
from imsim.settings import Settings
from imsim.timeline import Conversation, ReplyItem, UserItem


class _Delivered:
    """A toy message: delivered the moment it is sent."""

    def __init__(self) -> None:
        self.msg_id = new_uuid()
        self.status = "acked"
        self.raw = False
        self.first_pushed_at: int | None = None


class EchoPlatform(SimPlatform):
    """The smallest platform: its bot echoes every message at once; one fault, `mute`."""

    name: ClassVar[str] = "echo"
    title: ClassVar[str] = "Echo"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.chats_by_app: dict[str, dict[str, Conversation]] = {}
        self.muted: dict[str, bool] = {}

    def _chats(self, app_id: str) -> dict[str, Conversation]:
        if app_id not in self.chats_by_app:
            raise UnknownApp(app_id)
        return self.chats_by_app[app_id]

    def routers(self) -> Sequence[APIRouter]:
        return []

    def fault_kinds(self) -> list[str]:
        return ["mute"]

    def apps(self) -> list[AppSummary]:
        return [
            AppSummary(app_id=a, name=a, connections=1, queued=0, faults_on=["mute"] if self.muted[a] else [])
            for a in self.chats_by_app
        ]

    def add_app(self, app: NewApp) -> AppSummary:
        self.chats_by_app.setdefault(app.app_id, {})
        self.muted.setdefault(app.app_id, False)
        return next(a for a in self.apps() if a.app_id == app.app_id)

    async def inject(self, app_id: str, message: UserMessage, base_url: str) -> Injected:
        chats = self._chats(app_id)
        chat_id = f"{app_id}:{message.group or message.sender_id}"
        chat = chats.setdefault(
            chat_id,
            Conversation(chat_id, "2" if message.group else "1", message.group or message.sender_name),
        )
        sent = _Delivered()
        user = UserItem(sent, message.kind, message.text or "", None, message.sender_id, message.sender_name)
        sent.first_pushed_at = user.at
        chat.items.append(user)
        if not self.muted[app_id]:
            chat.add_answer(ReplyItem("text", f"echo: {message.text}", "echo"), sent_at=user.at)
        return Injected(msg_id=sent.msg_id, chat_id=chat_id, delivered=True)

    def chats(self) -> list[ChatSummary]:
        return [ChatSummary.of(a, c) for a, chats in self.chats_by_app.items() for c in chats.values()]

    def chat(self, app_id: str, chat_id: str) -> Conversation | None:
        return self._chats(app_id).get(chat_id)

    def counters(self, app_id: str) -> dict[str, Any]:
        return {"chats": len(self._chats(app_id))}

    def faults(self, app_id: str) -> dict[str, Any]:
        self._chats(app_id)
        return {"mute": self.muted[app_id]}

    def change_faults(self, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        self._chats(app_id)
        if set(changes) - {"mute"}:
            raise ValueError(f"unknown faults {sorted(set(changes) - {'mute'})}")
        self.muted[app_id] = bool(changes.get("mute", self.muted[app_id]))
        return self.faults(app_id)

    def reset(self, *, faults: bool) -> list[str]:
        for app_id, chats in self.chats_by_app.items():
            chats.clear()
            if faults:
                self.muted[app_id] = False
        return list(self.chats_by_app)
