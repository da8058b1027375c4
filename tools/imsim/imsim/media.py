"""Files users send (pictures, voice, documents, videos), kept until the bot downloads them."""

import struct
import zlib
from dataclasses import dataclass


@dataclass
class Media:
    content: bytes
    content_type: str
    file_name: str | None = None


def _one_pixel_png() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\x33\x88\xff")  # filter byte + one blue pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# (content type, bytes) a message of each kind carries when a test gives no file of its own.
PLACEHOLDERS: dict[str, tuple[str, bytes]] = {
    "picture": ("image/png", _one_pixel_png()),
    "audio": ("audio/amr", b"#!AMR\n" + b"\x00" * 32),
    "file": ("text/plain", b"imsim placeholder file\n"),
    "video": ("video/mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16),
}
