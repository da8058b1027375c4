"""Files users send (pictures, voice, documents, videos), kept until the bot downloads them."""

from dataclasses import dataclass


@dataclass
class Media:
    content: bytes
    content_type: str
    file_name: str | None = None
