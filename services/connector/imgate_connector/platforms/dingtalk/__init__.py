"""DingTalk: Stream-mode connection, message translation, AI cards."""
