"""A bot built on the real dingtalk-stream SDK, run as its own process against imsim by
test_sdk_client.py (the SDK reads DINGTALK_OPENAPI_ENDPOINT when it is imported).

`python sdk_bot.py CLIENT_ID CLIENT_SECRET`. What it does depends on the message text:

- `sync …`: AICardReplier start / streaming (append, then full + finalize) / finish
- `async …`: the same through the async_* calls (aiohttp)
- `fail …`: AICardReplier start / streaming with isError / fail
- `deliver …`: CardReplier.create_and_deliver_card, then put_card_data by key
- `ai …`: the SDK's AI markdown card: ai_start, ai_streaming, ai_finish with the final text (one
  card instance update carrying the text and the finished state; the stream is never finalized)
- anything else: a sessionWebhook text reply plus an AI markdown card (create, stream, finish)
"""

import sys

import dingtalk_stream
from dingtalk_stream import AckMessage, ChatbotHandler, ChatbotMessage
from dingtalk_stream.card_replier import AICardReplier, CardReplier

TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"
KEY = "msgContent"


class ScriptedHandler(ChatbotHandler):
    async def process(self, callback):
        message = ChatbotMessage.from_dict(callback.data)
        command, _, rest = message.text.content.strip().partition(" ")
        if command == "sync":
            self.sync_card(message, rest)
        elif command == "async":
            await self.async_card(message, rest)
        elif command == "fail":
            self.failed_card(message, rest)
        elif command == "deliver":
            self.delivered_card(message, rest)
        elif command == "ai":
            self.ai_card(message, rest)
        else:
            self.echo(message)
        return AckMessage.STATUS_OK, "OK"

    def sync_card(self, message, text):
        replier = AICardReplier(self.dingtalk_client, message)
        card_id = replier.start(TEMPLATE, {KEY: ""})
        replier.streaming(card_id, KEY, "Hel", append=True, finished=False, failed=False)
        replier.streaming(card_id, KEY, text, append=False, finished=True, failed=False)
        replier.finish(card_id, {KEY: text})
        print(f"card sync {card_id}", flush=True)

    async def async_card(self, message, text):
        replier = AICardReplier(self.dingtalk_client, message)
        card_id = await replier.async_start(TEMPLATE, {KEY: ""})
        await replier.async_streaming(card_id, KEY, "As", append=True, finished=False, failed=False)
        await replier.async_streaming(card_id, KEY, text, append=False, finished=True, failed=False)
        await replier.async_finish(card_id, {KEY: text})
        print(f"card async {card_id}", flush=True)

    def failed_card(self, message, text):
        replier = AICardReplier(self.dingtalk_client, message)
        card_id = replier.start(TEMPLATE, {KEY: ""})
        replier.streaming(card_id, KEY, text, append=True, finished=False, failed=True)
        replier.fail(card_id, {KEY: text})
        print(f"card fail {card_id}", flush=True)

    def delivered_card(self, message, text):
        replier = CardReplier(self.dingtalk_client, message)
        card_id = replier.create_and_deliver_card(TEMPLATE, {KEY: "", "msgTitle": "Title"})
        replier.put_card_data(
            card_id, {KEY: text, "flowStatus": "3"}, cardUpdateOptions={"updateCardDataByKey": True}
        )
        print(f"card deliver {card_id}", flush=True)

    def ai_card(self, message, text):
        card = self.ai_markdown_card_start(message)
        card.ai_streaming(text[:3], append=False)
        card.ai_finish(text)
        print(f"card ai {card.card_instance_id}", flush=True)

    def echo(self, message):
        self.reply_text("echo: " + message.text.content, message)
        card = self.ai_markdown_card_start(message)
        card.ai_streaming("Hello", append=True)
        card.ai_streaming(", world", append=True)
        card.ai_finish()


def main() -> None:
    credential = dingtalk_stream.Credential(sys.argv[1], sys.argv[2])
    client = dingtalk_stream.DingTalkStreamClient(credential)
    client.register_callback_handler(ChatbotMessage.TOPIC, ScriptedHandler())
    client.start_forever()


if __name__ == "__main__":
    main()
