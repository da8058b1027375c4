"""Secrets at rest (Fernet key ring with rotation) and secret redaction in logs."""

import json
import uuid

import httpx
import pytest
import structlog
from cryptography.fernet import Fernet
from sqlalchemy.exc import IntegrityError

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Message
from imgate_common.logs import REDACTED, redact_secrets, redact_text
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


# --- signed URLs and URL credentials in free text ------------------------------------------------

SIGNED = {
    "oss": "https://bucket.oss-cn-hangzhou.aliyuncs.com/a.png?Expires=1&OSSAccessKeyId=LTAI&Signature=oss-sig%2B%3D",
    "s3": "https://b.s3.amazonaws.com/f?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=s3-sig&X-Amz-Security-Token=s3-tok",
    "ticket": "wss://wss-open-connection.dingtalk.com/connect?ticket=stream-ticket",
    "session": "https://oapi.dingtalk.com/robot/sendBySession?session=webhook-session",
    "userinfo": "https://svc:userinfo-pass@erp.example.com/lookup",
    "access_token": "https://h.example/cb?code=1&access_token=oauth-token",
}
SIGNED_SECRETS = (
    "oss-sig",
    "s3-sig",
    "s3-tok",
    "stream-ticket",
    "webhook-session",
    "userinfo-pass",
    "oauth-token",
)


def test_a_media_download_error_names_no_signature(capsys: pytest.CaptureFixture[str]) -> None:
    """httpx puts the whole URL into an HTTP error's text, which is what gets logged."""
    from imgate_common.logs import configure_logging

    configure_logging("test", "json")
    for name, url in SIGNED.items():
        response = httpx.Response(403, request=httpx.Request("GET", url))
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            structlog.get_logger().warning("media_download_failed", error=str(exc), kind=name)
            structlog.get_logger().warning(f"download of {url} failed")
    out = capsys.readouterr().err
    assert out.count("media_download_failed") == len(SIGNED)
    for secret in SIGNED_SECRETS:
        assert secret not in out, secret
    assert "bucket.oss-cn-hangzhou.aliyuncs.com/a.png" in out and "svc:" in out  # where, without the key
    structlog.reset_defaults()


def test_redact_text_keeps_what_is_not_a_credential() -> None:
    text = "GET https://h.example/a?page=2&Expires=9 failed: 404 (tokens used: 5)"
    assert redact_text(text) == text


# --- a failed statement names no values ----------------------------------------------------------


async def test_a_failed_insert_does_not_carry_the_message_text(any_db_url: str) -> None:
    await upgrade_async(any_db_url)
    engine = create_engine(any_db_url)
    text = "private message text " + uuid.uuid4().hex
    try:
        async with session_factory(engine)() as session:
            # No such conversation: the foreign key refuses the row.
            session.add(Message(conversation_id="no-such-conversation", role="user", content=text))
            with pytest.raises(IntegrityError) as failed:
                await session.commit()
    finally:
        await engine.dispose()
    assert text not in str(failed.value) and text not in repr(failed.value)
    assert "hidden due to hide_parameters" in str(failed.value)
