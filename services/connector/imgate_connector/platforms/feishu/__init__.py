"""Feishu / Lark: long connection (protobuf frames), message translation, CardKit streaming cards."""
