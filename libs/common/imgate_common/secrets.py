"""Secrets at rest: Fernet tokens under a key ring (MultiFernet) so keys can be rotated."""

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from imgate_common.settings import CommonSettings

MASK = "***"
KEY_FILE = "secret.key"


class UnreadableSecrets(RuntimeError):
    """The configured keys cannot read the secrets the database holds: the service must not start
    (it would answer every request that needs one with an error, and encrypt new ones under a key
    no other service has)."""


class SecretBox:
    """Encrypts with the first key, decrypts with any; `rotate` re-encrypts under the first."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is required")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    @classmethod
    def from_settings(cls, settings: CommonSettings, stored: Mapping[str, str] | None = None) -> "SecretBox":
        """The configured key ring (IMGATE_SECRET_KEYS), else the checkout's local key. With
        `stored` (where → token, what the database holds), a ring that cannot read every token is
        refused, and no local key is made up while there are tokens it could not read."""
        keys = [k.strip() for k in settings.secret_keys.split(",") if k.strip()]
        if not keys:
            keys = [_local_key(settings.data_dir, create=not stored)]
        box = cls(keys)
        unreadable = [where for where, token in (stored or {}).items() if not box.can_read(token)]
        if unreadable:
            shown = ", ".join(unreadable[:5]) + (", …" if len(unreadable) > 5 else "")
            raise UnreadableSecrets(
                f"the configured keys cannot decrypt {len(unreadable)} stored secret(s) ({shown}): "
                "set IMGATE_SECRET_KEYS to the key ring the admin API encrypts with (newest first, "
                "keep older keys after it until `secrets rotate` ran)"
            )
        return box

    def can_read(self, token: str) -> bool:
        try:
            self._fernet.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

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


def _local_key(data_dir: Path, *, create: bool = True) -> str:
    """A per-checkout key for local runs, created once with owner-only permissions."""
    path = data_dir / KEY_FILE
    if path.exists():
        return _read_key(path)
    if not create:
        raise UnreadableSecrets(
            f"IMGATE_SECRET_KEYS is not set and there is no {path}, but the database holds "
            "encrypted secrets: set IMGATE_SECRET_KEYS to the key ring the admin API encrypts with"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    # Several services may start at once on a fresh checkout: the key is written whole under a
    # temporary name (mode 0600) and linked into place, so one creator wins and every other one
    # reads the winner's complete key, never an empty or partial file.
    fd, temporary = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=data_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return _read_key(path)
    finally:
        os.unlink(temporary)
    return key


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise UnreadableSecrets(
            f"{path} is empty: delete it (no secret was encrypted with it) and start again"
        )
    return key
