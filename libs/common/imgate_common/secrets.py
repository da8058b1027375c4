"""Secrets at rest: Fernet tokens under a key ring (MultiFernet) so keys can be rotated."""

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from imgate_common.settings import CommonSettings

MASK = "***"
KEY_FILE = "secret.key"


class SecretBox:
    """Encrypts with the first key, decrypts with any; `rotate` re-encrypts under the first."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is required")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> "SecretBox":
        keys = [k.strip() for k in settings.secret_keys.split(",") if k.strip()]
        return cls(keys or [_local_key(settings.data_dir)])

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with the configured keys") from exc

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()

    def encrypt_json(self, values: dict[str, Any]) -> str:
        return self.encrypt(json.dumps(values, sort_keys=True))

    def decrypt_json(self, token: str | None) -> dict[str, Any]:
        return json.loads(self.decrypt(token)) if token else {}


def _local_key(data_dir: Path) -> str:
    """A per-checkout key for local runs, created once with owner-only permissions."""
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key
