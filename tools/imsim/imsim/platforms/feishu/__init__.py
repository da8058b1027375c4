"""Feishu / Lark: the long connection (protobuf frames, ACKs, redelivery), the OpenAPI the bot
calls (tenant token, CardKit cards, IM replies and sends, message resources), and their faults."""

NAME = "feishu"
