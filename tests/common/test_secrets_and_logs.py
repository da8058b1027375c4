"""Secrets at rest (Fernet key ring with rotation) and secret redaction in logs."""

import json

import pytest
import structlog
from cryptography.fernet import Fernet

from imgate_common.logs import REDACTED, redact_secrets
from imgate_common.secrets import SecretBox
from imgate_common.settings import CommonSettings


def test_rotation_keeps_old_tokens_readable_and_rewrites_them_under_the_new_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old]).encrypt("s3cret")
    ring = SecretBox([new, old])
    assert ring.decrypt(token) == "s3cret"
    rotated = ring.rotate(token)
    assert SecretBox([new]).decrypt(rotated) == "s3cret"
    with pytest.raises(ValueError):
        SecretBox([new]).decrypt(token)


def test_local_key_file_is_created_once_and_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = CommonSettings(data_dir=tmp_path)
    token = SecretBox.from_settings(settings).encrypt_json({"client_secret": "x"})
    assert SecretBox.from_settings(settings).decrypt_json(token) == {"client_secret": "x"}
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_redaction_blanks_secret_fields_and_secret_looking_text() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "calling",
            "client_secret": "abc",
            "headers": {"Authorization": "Bearer xyz", "accept": "json"},
            "url": "http://x/open?ticket=t-123&x=1",
            "note": "sent Bearer tok-456 upstream",
        },
    )
    text = json.dumps(event)
    for secret in ("abc", "xyz", "t-123", "tok-456"):
        assert secret not in text
    assert event["client_secret"] == REDACTED
    assert event["headers"]["accept"] == "json"


def test_configured_logger_never_prints_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    from imgate_common.logs import configure_logging

    configure_logging("test", "json")
    structlog.get_logger().info("channel_saved", config={"client_id": "id1", "client_secret": "hush"})
    out = capsys.readouterr().err
    assert "channel_saved" in out and "id1" in out
    assert "hush" not in out
    structlog.reset_defaults()
