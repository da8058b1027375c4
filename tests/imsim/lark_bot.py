"""A bot built on the real lark-oapi SDK, run as its own process against imsim by
test_lark_sdk_client.py (the SDK's websocket client blocks its thread in its own event loop).

`python lark_bot.py IMSIM_URL APP_ID APP_SECRET`. It prints every event it receives as a JSON
line (`event {...}`) and answers it, depending on the text:

- `card …`: CardKit through `lark.Client`: create a streaming card, reply with it, stream the
  text in two steps, turn streaming off with a summary (`card-done <card_id>` when finished)
- anything else: nothing besides the ACK the SDK sends when the handler returns
"""

import json
import sys

import lark_oapi as lark
from lark_oapi.api.cardkit.v1 import (
    ContentCardElementRequest,
    ContentCardElementRequestBody,
    CreateCardRequest,
    CreateCardRequestBody,
    SettingsCardRequest,
    SettingsCardRequestBody,
)
from lark_oapi.api.im.v1 import P2ImMessageReceiveV1, ReplyMessageRequest, ReplyMessageRequestBody

ELEMENT = "answer"


def _check(response, what):
    if not response.success():
        raise RuntimeError(f"{what} failed: {response.code} {response.msg}")
    return response


def answer_with_card(client: lark.Client, message_id: str, text: str) -> str:
    card = {
        "schema": "2.0",
        "config": {"streaming_mode": True, "summary": {"content": "[Generating...]"}},
        "body": {"elements": [{"tag": "markdown", "content": "", "element_id": ELEMENT}]},
    }
    created = _check(
        client.cardkit.v1.card.create(
            CreateCardRequest.builder()
            .request_body(CreateCardRequestBody.builder().type("card_json").data(json.dumps(card)).build())
            .build()
        ),
        "card create",
    )
    card_id = created.data.card_id
    _check(
        client.im.v1.message.reply(
            ReplyMessageRequest.builder()
            .message_id(message_id)
            .request_body(
                ReplyMessageRequestBody.builder()
                .msg_type("interactive")
                .content(json.dumps({"type": "card", "data": {"card_id": card_id}}))
                .uuid(f"reply-{message_id}")
                .build()
            )
            .build()
        ),
        "reply",
    )
    for sequence, content in enumerate((text[: len(text) // 2], text), start=1):
        _check(
            client.cardkit.v1.card_element.content(
                ContentCardElementRequest.builder()
                .card_id(card_id)
                .element_id(ELEMENT)
                .request_body(
                    ContentCardElementRequestBody.builder().content(content).sequence(sequence).build()
                )
                .build()
            ),
            "stream",
        )
    settings = {"config": {"streaming_mode": False, "summary": {"content": text}}}
    _check(
        client.cardkit.v1.card.settings(
            SettingsCardRequest.builder()
            .card_id(card_id)
            .request_body(
                SettingsCardRequestBody.builder().settings(json.dumps(settings)).sequence(3).build()
            )
            .build()
        ),
        "settings",
    )
    return card_id


def main() -> None:
    url, app_id, app_secret = sys.argv[1:4]
    client = lark.Client.builder().app_id(app_id).app_secret(app_secret).domain(url).build()

    def on_message(data: P2ImMessageReceiveV1) -> None:
        message = data.event.message
        print(
            "event " + lark.JSON.marshal({"event_id": data.header.event_id, "message": message}), flush=True
        )
        text = json.loads(message.content).get("text", "")
        command, _, rest = text.partition(" ")
        if command == "card":
            card_id = answer_with_card(client, message.message_id, rest)
            print(f"card-done {card_id}", flush=True)

    handler = (
        lark.EventDispatcherHandler.builder("", "").register_p2_im_message_receive_v1(on_message).build()
    )
    lark.ws.Client(
        app_id, app_secret, event_handler=handler, domain=url, log_level=lark.LogLevel.DEBUG
    ).start()


if __name__ == "__main__":
    main()
