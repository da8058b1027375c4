"""DingTalk: the Stream gateway, the OpenAPI (token, AI cards, robot messages, media), the
sessionWebhook, and the faults that go with them."""

NAME = "dingtalk"
