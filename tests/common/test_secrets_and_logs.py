"""Secrets at rest (Fernet key ring with rotation) and secret redaction in logs."""

import json
import multiprocessing
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography.fernet import Fernet
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.channels import load_secret_box
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Agent, Message
from imgate_common.logs import REDACTED, redact_secrets, redact_text
from imgate_common.runtime import service_main
from imgate_common.secrets import SecretBox, UnreadableSecrets
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


# --- the local key, made by several services starting at once ----------------------------------


def _local_key_in(data_dir: str) -> str:
    """One service's start on a fresh checkout: its key ring, as the key it encrypts with."""
    box = SecretBox.from_settings(CommonSettings(data_dir=Path(data_dir)))
    return box.decrypt(box.encrypt("probe")) and (Path(data_dir) / "secret.key").read_text()


def test_concurrent_first_starts_share_one_whole_key(tmp_path: Path) -> None:
    """`make run` starts four services at once on a fresh checkout: none may fail on the file
    another is creating, read it empty, or end up with a key of its own."""
    for attempt in range(20):
        data_dir = tmp_path / f"run-{attempt}"
        barrier = threading.Barrier(16)

        def start(path: Path = data_dir, gate: threading.Barrier = barrier) -> str:
            gate.wait()
            return _local_key_in(str(path))

        with ThreadPoolExecutor(16) as pool:
            keys = list(pool.map(lambda _: start(), range(16)))
        assert len(set(keys)) == 1 and Fernet(keys[0].encode())
        assert sorted(p.name for p in data_dir.iterdir()) == ["secret.key"]  # no temporary left


def _start_with(gate: Any, data_dir: str, keys: Any) -> None:
    gate.wait()
    keys.put(_local_key_in(data_dir))


def test_concurrent_first_starts_in_separate_processes_share_one_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # spawn would re-import the world per process
    for attempt in range(5):
        data_dir = tmp_path / f"run-{attempt}"
        gate, keys = context.Barrier(8), context.Queue()
        starts = [context.Process(target=_start_with, args=(gate, str(data_dir), keys)) for _ in range(8)]
        for process in starts:
            process.start()
        for process in starts:
            process.join(30)
        assert [p.exitcode for p in starts] == [0] * 8
        assert len({keys.get(timeout=5) for _ in starts}) == 1
        assert (data_dir / "secret.key").stat().st_mode & 0o777 == 0o600


def test_an_empty_key_file_is_reported_not_used(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("")
    with pytest.raises(UnreadableSecrets, match="is empty"):
        SecretBox.from_settings(CommonSettings(data_dir=tmp_path))


# --- a key ring that cannot read what the database holds is refused ---------------------------


def test_a_ring_that_cannot_read_the_stored_secrets_is_refused(tmp_path: Path) -> None:
    admin_key, other_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    stored = {"channels.user_mapping_secrets_enc#3": SecretBox([admin_key]).encrypt("bind-password")}
    with pytest.raises(
        UnreadableSecrets, match=r"cannot decrypt 1 stored secret\(s\) \(channels.user_mapping"
    ):
        SecretBox.from_settings(CommonSettings(data_dir=tmp_path, secret_keys=other_key), stored)
    # The same ring (an older key after a newer one included) reads them.
    ring = SecretBox.from_settings(
        CommonSettings(data_dir=tmp_path, secret_keys=f"{other_key},{admin_key}"), stored
    )
    assert ring.decrypt(stored["channels.user_mapping_secrets_enc#3"]) == "bind-password"


def test_no_key_is_made_up_while_the_database_holds_secrets(tmp_path: Path) -> None:
    stored = {"agents.api_key_enc#1": SecretBox([Fernet.generate_key().decode()]).encrypt("sk")}
    with pytest.raises(UnreadableSecrets, match="IMGATE_SECRET_KEYS is not set"):
        SecretBox.from_settings(CommonSettings(data_dir=tmp_path), stored)
    assert not (tmp_path / "secret.key").exists()
    # An empty database: the local key is made as before.
    assert SecretBox.from_settings(CommonSettings(data_dir=tmp_path), {})
    assert (tmp_path / "secret.key").exists()


async def test_a_service_reads_the_stored_secrets_at_start(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    async with sessions() as session:
        session.add(Agent(name="a", provider="openai", model="m", api_key_enc=SecretBox([key]).encrypt("sk")))
        await session.commit()
    box = await load_secret_box(CommonSettings(data_dir=tmp_path, secret_keys=key), sessions)
    assert box.can_read(SecretBox([key]).encrypt("x"))
    stranger = CommonSettings(data_dir=tmp_path, secret_keys=Fernet.generate_key().decode())
    with pytest.raises(UnreadableSecrets, match=r"agents.api_key_enc#\d+"):
        await load_secret_box(stranger, sessions)


def test_a_service_refusing_to_start_says_why_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def serve(_settings: CommonSettings, _stop: object) -> None:
        raise UnreadableSecrets("the configured keys cannot decrypt 1 stored secret(s)")

    with pytest.raises(SystemExit) as exited:
        service_main("router", CommonSettings(data_dir=tmp_path, log_format="json", metrics_port=-1), serve)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert '"event": "startup_refused"' in err and "cannot decrypt" in err and "Traceback" not in err
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


def test_a_logger_first_used_under_a_captured_stderr_still_writes_after_it_is_gone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module's logger is cached on first use. If it kept the stderr of that moment, a closed
    stream (a test's capture, gone) would make every later line raise — inside the NATS client's
    reconnect callbacks too, which then never reconnected."""
    import io

    from imgate_common.logs import configure_logging

    passing = io.StringIO()
    monkeypatch.setattr("sys.stderr", passing)
    configure_logging("test", "json")
    log = structlog.get_logger("cached")
    log.warning("first_use")
    passing.close()
    monkeypatch.undo()
    log.warning("after_the_capture_closed")  # raised ValueError: I/O operation on closed file
    assert "after_the_capture_closed" in capsys.readouterr().err
    structlog.reset_defaults()
