"""A flood of large pictures never stops text: the media bucket has its own cap; pictures past
it are skipped (their senders told), and every text message is still answered once."""

from collections.abc import Iterator

import httpx
import pytest

from tools.fleet import Fleet, FleetConfig, Sent

pytestmark = pytest.mark.e2e

BUCKET_BYTES = 2 * 1024 * 1024
PICTURE_BYTES = 512 * 1024  # the cap holds three
PICTURES = 10
SKIPPED_MARK = "文件存储空间暂时已满"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    config = FleetConfig(channels=1, extra_env={"CONNECTOR_MEDIA_BUCKET_MAX_BYTES": str(BUCKET_BYTES)})
    with Fleet(config, tmp_path_factory.mktemp("media-flood"), model=None) as fleet:
        [client_id] = fleet.client_ids
        with fleet.admin_api() as api:
            channel = api.get(f"/api/v1/channels/{fleet.channel_ids[client_id]}").json()
            agent = f"/api/v1/agents/{channel['default_agent_id']}"
            api.patch(agent, json={"supports_images": True}).raise_for_status()
        yield fleet


def send_picture(fleet: Fleet, client_id: str, sender: str, n: int) -> Sent:
    picture = b"\x89PNG\r\n\x1a\n" + n.to_bytes(4, "big") * (PICTURE_BYTES // 4)
    upload = httpx.post(
        f"{fleet.imsim}/sim/apps/{client_id}/media", content=picture, headers={"content-type": "image/png"}
    )
    upload.raise_for_status()
    body = {"msgtype": "picture", "content": {"downloadCode": upload.json()["download_code"]}}
    sent = fleet.sim("POST", f"/apps/{client_id}/messages", {**body, "sender_staff_id": sender})
    return Sent(client_id, sent["msg_id"], sent["conversation_id"], f"picture {n}")


def test_text_is_answered_while_pictures_fill_the_media_bucket(fleet: Fleet) -> None:
    [client_id] = fleet.client_ids
    pictures = [send_picture(fleet, client_id, f"flooder{n % 3}", n) for n in range(PICTURES)]
    texts = [fleet.send(client_id, f"reader{n}", f"still there? {n}") for n in range(3)]

    report = fleet.collect(texts, timeout_s=90)
    assert not report.lost and not report.doubled, report.describe(report.lost + report.doubled)
    assert all(o.final_text and "still there?" in o.final_text and not o.failed for o in report.outcomes)

    # Every picture message got its answer too (beside it, a picture the bucket could not take
    # has the one sentence telling its sender, which the report would count as a second reply).
    flood = fleet.collect(pictures, timeout_s=90)
    assert not flood.lost, flood.describe(flood.lost)
    told = [
        item
        for conversation in fleet.sim("GET", f"/apps/{client_id}/conversations")
        for item in conversation["items"]
        if SKIPPED_MARK in str(item.get("text", ""))
    ]
    stored = PICTURES - len(told)
    assert 1 <= stored * PICTURE_BYTES <= BUCKET_BYTES, f"{stored} pictures stored"
