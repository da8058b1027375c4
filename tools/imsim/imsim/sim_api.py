"""The platform-neutral sim API: play the user on any platform, read what the user sees, read
counters, switch faults on and off. Each platform adds its own routes beside these (DingTalk's
are `/sim/apps/...`). An unknown app is a 404: `create_app` maps `UnknownApp`."""

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import BaseModel

from imsim.dependencies import platforms, public_base_url
from imsim.platform import AppSummary, ChatSummary, Injected, NewApp, SimPlatform, UserMessage

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/sim")

Platforms = Annotated[dict[str, SimPlatform], Depends(platforms)]


class PlatformView(BaseModel):
    name: str
    title: str
    fault_kinds: list[str]
    apps: list[AppSummary]


class PlatformChats(BaseModel):
    platform: str
    title: str
    chats: list[ChatSummary]


def _platform(name: str, registered: Platforms) -> SimPlatform:
    platform = registered.get(name)
    if platform is None:
        raise HTTPException(404, f"unknown platform {name!r}")
    return platform


Platform = Annotated[SimPlatform, Depends(_platform)]


@router.get("/platforms")
async def list_platforms(registered: Platforms) -> list[PlatformView]:
    return [
        PlatformView(name=p.name, title=p.title, fault_kinds=p.fault_kinds(), apps=p.apps())
        for p in registered.values()
    ]


@router.get("/chats")
async def list_chats(registered: Platforms) -> list[PlatformChats]:
    """Every chat, grouped by platform (the chat page's list)."""
    return [PlatformChats(platform=p.name, title=p.title, chats=p.chats()) for p in registered.values()]


@router.post("/reset")
async def reset_all(registered: Platforms, faults: bool = False) -> dict[str, Any]:
    """Forget every app's records and counters on every platform; `?faults=true` also its faults."""
    reset = [app_id for platform in registered.values() for app_id in platform.reset(faults=faults)]
    log.info("sim_reset", apps=len(reset), faults=faults)
    return {"reset": reset}


@router.post("/platforms/{name}/apps")
async def add_app(body: NewApp, platform: Platform) -> AppSummary:
    return platform.add_app(body)


@router.post("/platforms/{name}/apps/{app_id}/messages")
async def send_message(
    body: UserMessage,
    platform: Platform,
    app_id: str,
    base_url: Annotated[str, Depends(public_base_url)],
) -> Injected:
    return await platform.inject(app_id, body, base_url)


@router.get("/platforms/{name}/apps/{app_id}/chats/{chat_id:path}")
async def get_chat(platform: Platform, app_id: str, chat_id: str) -> dict[str, Any]:
    """The chat as the user sees it: their messages and the bot's answers, in order."""
    chat = platform.chat(app_id, chat_id)
    if chat is None:
        raise HTTPException(404, f"unknown chat {chat_id!r}")
    return chat.to_json()


@router.get("/platforms/{name}/apps/{app_id}/counters")
async def get_counters(platform: Platform, app_id: str) -> dict[str, Any]:
    return platform.counters(app_id)


@router.get("/platforms/{name}/apps/{app_id}/faults")
async def get_faults(platform: Platform, app_id: str) -> dict[str, Any]:
    return platform.faults(app_id)


@router.patch("/platforms/{name}/apps/{app_id}/faults")
async def change_faults(
    platform: Platform, app_id: str, changes: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Switch the faults named in the body on or off; the others stay."""
    try:
        return platform.change_faults(app_id, changes)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
