"""DingTalk's OpenAPI as the gateway calls it: access token, AI cards, robot messages, media,
and the sessionWebhook plain reply."""

import asyncio
import json
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from imsim import identifiers
from imsim.call_recorder import attribute_call, mark_outcome
from imsim.dependencies import public_base_url
from imsim.identifiers import now_ms
from imsim.platforms.dingtalk.cards import (
    Card,
    CardDelivery,
    normalize_params,
    param_map_from_card_data,
    parse_open_space_id,
)
from imsim.platforms.dingtalk.dependencies import sim_state
from imsim.platforms.dingtalk.errors import OpenApiError, invalid_authentication
from imsim.platforms.dingtalk.faults import is_card_call, judge_card_call
from imsim.platforms.dingtalk.state import SimApp, SimState
from imsim.timeline import CardItem, ReplyItem

log = structlog.get_logger(__name__)
router = APIRouter()


class DingTalkBody(BaseModel):
    """OpenAPI bodies use camelCase and carry many fields imsim does not need."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


# -- access token ---------------------------------------------------------------------------


class AccessTokenBody(DingTalkBody):
    app_key: str
    app_secret: str


@router.post("/v1.0/oauth2/accessToken")
async def access_token(
    body: AccessTokenBody, request: Request, state: Annotated[SimState, Depends(sim_state)]
) -> dict[str, Any]:
    known = state.apps.get(body.app_key)
    if known is not None:
        attribute_call(request, known)
    app = state.app_by_credentials(body.app_key, body.app_secret)
    if app is None:
        raise OpenApiError(400, "invalidClientIdOrSecret", "appKey or appSecret is wrong")
    token = state.issue_token(app)
    log.info("access_token_issued", client_id=app.client_id)
    return {"accessToken": token, "expireIn": app.token_ttl}


async def token_app(
    request: Request,
    state: Annotated[SimState, Depends(sim_state)],
    x_acs_dingtalk_access_token: Annotated[str | None, Header()] = None,
) -> SimApp:
    """The app owning a valid access token; also where injected faults bite: one-shot faults
    first, then the card faults of the app's fault configuration."""
    token = x_acs_dingtalk_access_token
    app = state.app_by_token(token) if token else None
    if app is None:
        owner = state.token_owner(token) if token else None
        if owner is not None:  # an expired token: still that app's call
            attribute_call(request, owner, "unauthorized")
        raise invalid_authentication()
    attribute_call(request, app)
    method, path = request.method, request.url.path
    for fault in app.faults:
        if fault.matches(method, path):
            fault.hits += 1
            attribute_call(request, app, "fault")
            log.info("fault_injected", client_id=app.client_id, path=path, code=fault.code)
            raise OpenApiError(fault.status, fault.code, fault.message)
    if is_card_call(path):
        verdict = judge_card_call(app.fault_config, app.card_window, app.random)
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if verdict.error is not None:
            attribute_call(request, app, verdict.outcome)
            log.info("card_fault", client_id=app.client_id, path=path, outcome=verdict.outcome)
            raise verdict.error
    return app


AuthedApp = Annotated[SimApp, Depends(token_app)]


# -- AI cards -------------------------------------------------------------------------------


class CreateCardBody(DingTalkBody):
    card_template_id: str
    out_track_id: str
    card_data: dict[str, Any] | None = None
    callback_type: str | None = None
    open_space_id: str | None = None
    im_group_open_space_model: dict[str, Any] | None = None
    im_robot_open_space_model: dict[str, Any] | None = None


class DeliverCardBody(DingTalkBody):
    out_track_id: str
    open_space_id: str
    im_group_open_deliver_model: dict[str, Any] | None = None
    im_robot_open_deliver_model: dict[str, Any] | None = None


class CreateAndDeliverCardBody(CreateCardBody):
    open_space_id: str
    im_group_open_deliver_model: dict[str, Any] | None = None
    im_robot_open_deliver_model: dict[str, Any] | None = None


class UpdateCardBody(DingTalkBody):
    out_track_id: str
    card_data: dict[str, Any] | None = None
    card_update_options: dict[str, Any] | None = None


class StreamCardBody(DingTalkBody):
    out_track_id: str
    guid: str
    key: str
    content: str = ""
    is_full: bool = False
    is_finalize: bool = False
    is_error: bool = False


def _card(app: SimApp, out_track_id: str) -> Card:
    card = app.cards.get(out_track_id)
    if card is None:
        raise OpenApiError(400, "param.outTrackId.notExist", f"card instance {out_track_id!r} does not exist")
    return card


def _new_card(app: SimApp, body: CreateCardBody) -> Card:
    if body.out_track_id in app.cards:
        raise OpenApiError(
            400, "param.outTrackId.duplicate", f"card instance {body.out_track_id!r} already exists"
        )
    params = normalize_params(param_map_from_card_data(body.card_data))
    return Card(body.out_track_id, body.card_template_id, params, body.callback_type)


def _check_deliver_models(
    app: SimApp,
    spaces: list[tuple[str, str]],
    robot_model: dict[str, Any] | None,
    group_model: dict[str, Any] | None,
) -> None:
    for space_type, _space_id in spaces:
        if space_type == "IM_ROBOT":
            if robot_model is None:
                raise OpenApiError(
                    400,
                    "param.imRobotOpenDeliverModel.missing",
                    "imRobotOpenDeliverModel is required for IM_ROBOT",
                )
            if robot_model.get("spaceType", "IM_ROBOT") != "IM_ROBOT":
                raise OpenApiError(
                    400,
                    "param.imRobotOpenDeliverModel.invalid",
                    "imRobotOpenDeliverModel.spaceType must be IM_ROBOT",
                )
        else:
            if group_model is None:
                raise OpenApiError(
                    400,
                    "param.imGroupOpenDeliverModel.missing",
                    "imGroupOpenDeliverModel is required for IM_GROUP",
                )
            if group_model.get("robotCode") != app.robot_code:
                raise OpenApiError(
                    400,
                    "param.robotCode.invalid",
                    "imGroupOpenDeliverModel.robotCode is not this app's robot",
                )


def _deliver(app: SimApp, card: Card, spaces: list[tuple[str, str]]) -> list[dict[str, Any]]:
    results = []
    for space_type, space_id in spaces:
        if space_type == "IM_ROBOT":
            conversation = app.single_conversation(space_id)
        else:
            conversation = app.group_conversation(space_id, None)
        shown = any(isinstance(i, CardItem) and i.card is card for i in conversation.items)
        if not shown:
            conversation.add_answer(CardItem(card), sent_at=card.created_at)
            card.record_delivery(CardDelivery(space_type, space_id, conversation.conversation_id, now_ms()))
        results.append(
            {"spaceType": space_type, "spaceId": space_id, "success": True, "carrierId": card.out_track_id}
        )
    log.info("card_delivered", client_id=app.client_id, out_track_id=card.out_track_id, spaces=len(spaces))
    return results


def _card_result(card: Card, deliver_results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "success": True,
        "result": {"outTrackId": card.out_track_id, "deliverResults": deliver_results},
    }


@router.post("/v1.0/card/instances")
async def create_card(body: CreateCardBody, app: AuthedApp) -> dict[str, Any]:
    card = _new_card(app, body)
    app.cards[card.out_track_id] = card
    log.info("card_created", client_id=app.client_id, out_track_id=card.out_track_id)
    return _card_result(card, [])


@router.post("/v1.0/card/instances/deliver")
async def deliver_card(body: DeliverCardBody, app: AuthedApp) -> dict[str, Any]:
    card = _card(app, body.out_track_id)
    spaces = parse_open_space_id(body.open_space_id)
    _check_deliver_models(app, spaces, body.im_robot_open_deliver_model, body.im_group_open_deliver_model)
    return _card_result(card, _deliver(app, card, spaces))


@router.post("/v1.0/card/instances/createAndDeliver")
async def create_and_deliver_card(body: CreateAndDeliverCardBody, app: AuthedApp) -> dict[str, Any]:
    spaces = parse_open_space_id(body.open_space_id)
    _check_deliver_models(app, spaces, body.im_robot_open_deliver_model, body.im_group_open_deliver_model)
    card = _new_card(app, body)
    app.cards[card.out_track_id] = card
    log.info("card_created", client_id=app.client_id, out_track_id=card.out_track_id)
    return _card_result(card, _deliver(app, card, spaces))


@router.put("/v1.0/card/instances")
async def update_card(body: UpdateCardBody, app: AuthedApp) -> dict[str, Any]:
    card = _card(app, body.out_track_id)
    params = normalize_params(param_map_from_card_data(body.card_data))
    by_key = bool((body.card_update_options or {}).get("updateCardDataByKey"))
    card.update_params(params, by_key=by_key)
    log.info(
        "card_updated",
        client_id=app.client_id,
        out_track_id=card.out_track_id,
        flow_status=card.flow_status,
        by_key=by_key,
    )
    return {"success": True, "result": True}


@router.put("/v1.0/card/streaming")
async def stream_card(body: StreamCardBody, app: AuthedApp) -> dict[str, Any]:
    card = _card(app, body.out_track_id)
    applied = card.stream(
        key=body.key,
        content=body.content,
        is_full=body.is_full,
        is_finalize=body.is_finalize,
        is_error=body.is_error,
        guid=body.guid,
    )
    if not applied:
        log.info(
            "card_stream_repeated_guid",
            client_id=app.client_id,
            out_track_id=card.out_track_id,
            guid=body.guid,
        )
    return {"success": True, "result": True}


# -- robot messages and media ---------------------------------------------------------------


class BatchSendBody(DingTalkBody):
    robot_code: str
    user_ids: list[str]
    msg_key: str
    msg_param: str


class GroupSendBody(DingTalkBody):
    robot_code: str
    open_conversation_id: str
    msg_key: str
    msg_param: str


class DownloadBody(DingTalkBody):
    robot_code: str
    download_code: str


def _check_robot(app: SimApp, robot_code: str) -> None:
    if robot_code != app.robot_code:
        raise OpenApiError(400, "resource.not.found", f"robot {robot_code!r} does not exist")


def _template_reply(msg_key: str, msg_param: str, via: str) -> ReplyItem:
    try:
        param = json.loads(msg_param)
    except ValueError as exc:
        raise OpenApiError(400, "param.msgParam.invalid", "msgParam is not JSON") from exc
    if not isinstance(param, dict):
        raise OpenApiError(400, "param.msgParam.invalid", "msgParam must be a JSON object")
    if msg_key == "sampleText":
        return ReplyItem("text", str(param.get("content", "")), via)
    if msg_key == "sampleMarkdown":
        return ReplyItem("markdown", str(param.get("text", "")), via, title=str(param.get("title", "")))
    raise OpenApiError(
        400,
        "param.msgKey.unsupported",
        f"imsim supports msgKey sampleText and sampleMarkdown, not {msg_key!r}",
    )


def _check_messages_up(request: Request, app: SimApp) -> None:
    if app.fault_config.messages_down:
        attribute_call(request, app, "messages_down")
        raise OpenApiError(503, "ServiceUnavailable", "message service is temporarily unavailable")


@router.post("/v1.0/robot/oToMessages/batchSend")
async def batch_send(body: BatchSendBody, app: AuthedApp, request: Request) -> dict[str, Any]:
    _check_messages_up(request, app)
    _check_robot(app, body.robot_code)
    for staff_id in body.user_ids:
        reply = _template_reply(body.msg_key, body.msg_param, "batchSend")
        app.single_conversation(staff_id).add_answer(reply, sent_at=reply.at)
    log.info("robot_batch_sent", client_id=app.client_id, users=len(body.user_ids))
    return {
        "processQueryKey": identifiers.new_token(),
        "invalidStaffIdList": [],
        "flowControlledStaffIdList": [],
    }


@router.post("/v1.0/robot/groupMessages/send")
async def group_send(body: GroupSendBody, app: AuthedApp, request: Request) -> dict[str, Any]:
    _check_messages_up(request, app)
    _check_robot(app, body.robot_code)
    reply = _template_reply(body.msg_key, body.msg_param, "groupSend")
    app.group_conversation(body.open_conversation_id, None).add_answer(reply, sent_at=reply.at)
    log.info("robot_group_sent", client_id=app.client_id, conversation_id=body.open_conversation_id)
    return {"processQueryKey": identifiers.new_token()}


@router.post("/v1.0/robot/messageFiles/download")
async def download_url(
    body: DownloadBody,
    app: AuthedApp,
    state: Annotated[SimState, Depends(sim_state)],
    base_url: Annotated[str, Depends(public_base_url)],
) -> dict[str, Any]:
    _check_robot(app, body.robot_code)
    if body.download_code not in state.media:
        raise OpenApiError(400, "param.downloadCode.invalid", "unknown downloadCode")
    return {"downloadUrl": f"{base_url}/media/{body.download_code}"}


@router.get("/media/{code}")
async def media(code: str, state: Annotated[SimState, Depends(sim_state)]) -> Response:
    item = state.media.get(code)
    if item is None:
        return Response(status_code=404)
    headers = {}
    if item.file_name:
        headers["Content-Disposition"] = f'attachment; filename="{item.file_name}"'
    return Response(item.content, media_type=item.content_type, headers=headers)


# -- sessionWebhook -------------------------------------------------------------------------


def _webhook_error(request: Request, errcode: int, errmsg: str) -> JSONResponse:
    # DingTalk answers webhook failures with HTTP 200 and a non-zero errcode.
    mark_outcome(request, f"errcode_{errcode}")
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


@router.post("/robot/sendBySession")
async def send_by_session(
    request: Request, state: Annotated[SimState, Depends(sim_state)], session: str = ""
) -> JSONResponse:
    record = state.sessions.get(session)
    app = state.apps.get(record.client_id) if record is not None else None
    conversation = app.conversations.get(record.conversation_id) if app and record else None
    if record is None or app is None or conversation is None:
        return _webhook_error(request, 310000, "invalid session")
    attribute_call(request, app)
    if app.fault_config.messages_down:
        mark_outcome(request, "messages_down")
        return JSONResponse({"errcode": 503, "errmsg": "service unavailable"}, status_code=503)
    if record.expires_at_ms <= now_ms():
        return _webhook_error(request, 300001, "session expired")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _webhook_error(request, 40035, "body is not JSON")
    if not isinstance(body, dict):
        return _webhook_error(request, 40035, "body must be a JSON object")
    at = body.get("at")
    at_user_ids = [str(u) for u in at.get("atUserIds") or []] if isinstance(at, dict) else []
    msgtype = body.get("msgtype")
    if msgtype == "text" and isinstance(body.get("text"), dict):
        reply = ReplyItem("text", str(body["text"].get("content", "")), "webhook", at_user_ids=at_user_ids)
    elif msgtype == "markdown" and isinstance(body.get("markdown"), dict):
        markdown = body["markdown"]
        reply = ReplyItem(
            "markdown",
            str(markdown.get("text", "")),
            "webhook",
            title=str(markdown.get("title", "")),
            at_user_ids=at_user_ids,
        )
    else:
        return _webhook_error(request, 40035, f"imsim supports msgtype text and markdown, not {msgtype!r}")
    reply.reply_to, reply.link = record.msg_id, "session"
    conversation.add_answer(reply, sent_at=reply.at)
    log.info(
        "session_reply", client_id=app.client_id, conversation_id=record.conversation_id, kind=reply.kind
    )
    return JSONResponse({"errcode": 0, "errmsg": "ok"})
