"""Users and IM identities (search, view, link by hand, unlink); conversations (list, transcript, close)."""

from datetime import UTC, datetime, timedelta

import httpx
from sqlmodel import col, select

from imgate_admin.deps import Resources
from imgate_common.db.models import AuditEntry, Conversation, ImIdentity, Message, User

from .conftest import create_channel


async def _auto_user(resources: Resources, username: str, staff_id: str, nick: str) -> tuple[int, int]:
    """A user as the router makes one on first contact, with its identity."""
    async with resources.sessions() as session:
        user = User(
            username=username, email=f"{username}@im.local", display_name=nick, auth_source="dingtalk"
        )
        session.add(user)
        await session.flush()
        assert user.id is not None
        identity = ImIdentity(
            platform="dingtalk", tenant_id="corp1", platform_user_id=staff_id, user_id=user.id, nick=nick
        )
        session.add(identity)
        await session.commit()
        assert identity.id is not None
        return user.id, identity.id


async def test_create_search_and_view_users(client: httpx.AsyncClient, resources: Resources) -> None:
    created = await client.post(
        "/api/v1/users", json={"username": "alice", "email": "alice@example.com", "display_name": "Alice A."}
    )
    assert created.status_code == 201, created.text
    alice = created.json()
    assert (alice["auth_source"], alice["identities"]) == ("manual", [])
    await _auto_user(resources, "staff-42", "staff-42", "小王")

    everyone = await client.get("/api/v1/users")
    assert [u["username"] for u in everyone.json()] == ["alice", "staff-42"]
    assert everyone.headers["x-total-count"] == "2"
    for term, expected in [
        ("ALICE", ["alice"]),
        ("example.com", ["alice"]),
        ("小王", ["staff-42"]),
        ("aff-4", ["staff-42"]),
    ]:
        found = (await client.get("/api/v1/users", params={"q": term})).json()
        assert [u["username"] for u in found] == expected, term
    page = await client.get("/api/v1/users", params={"limit": 1, "offset": 1})
    assert [u["username"] for u in page.json()] == ["staff-42"] and page.headers["x-total-count"] == "2"

    viewed = (await client.get(f"/api/v1/users/{alice['id']}")).json()
    assert viewed == alice
    assert (await client.get("/api/v1/users/4242")).status_code == 404
    duplicate = await client.post("/api/v1/users", json={"username": "alice"})
    assert duplicate.status_code == 409
    invalid = await client.post("/api/v1/users", json={"username": "bob", "email": "not-an-email"})
    assert invalid.status_code == 422 and invalid.json()["error"]["details"][0]["loc"] == "email"


async def test_an_identity_is_linked_by_hand_moved_and_unlinked(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    alice = (await client.post("/api/v1/users", json={"username": "alice"})).json()
    auto_id, identity_id = await _auto_user(resources, "staff-42", "staff-42", "Wang")

    # The identity the router gave an automatic user now points at Alice: 200, it moved.
    body = {"platform": "dingtalk", "tenant_id": "corp1", "platform_user_id": "staff-42"}
    moved = await client.post(f"/api/v1/users/{alice['id']}/identities", json=body)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["id"], moved.json()["user_id"], moved.json()["nick"]) == (
        identity_id,
        alice["id"],
        "Wang",
    )
    assert (await client.get(f"/api/v1/users/{auto_id}")).json()["identities"] == []

    # A new identity: 201.
    new = {"platform": "dingtalk", "platform_user_id": "alice-phone", "nick": "Alice"}
    created = await client.post(f"/api/v1/users/{alice['id']}/identities", json=new)
    assert created.status_code == 201
    assert created.json()["tenant_id"] == ""
    linked = (await client.get(f"/api/v1/users/{alice['id']}")).json()["identities"]
    assert [i["platform_user_id"] for i in linked] == ["staff-42", "alice-phone"]

    assert (await client.delete(f"/api/v1/users/{auto_id}/identities/{identity_id}")).status_code == 404
    assert (await client.delete(f"/api/v1/users/{alice['id']}/identities/{identity_id}")).status_code == 204
    left = (await client.get(f"/api/v1/users/{alice['id']}")).json()["identities"]
    assert [i["platform_user_id"] for i in left] == ["alice-phone"]
    assert (await client.post("/api/v1/users/4242/identities", json=new)).status_code == 404
    missing = await client.post(f"/api/v1/users/{alice['id']}/identities", json={"platform": "dingtalk"})
    assert missing.status_code == 422

    async with resources.sessions() as session:
        audit = (
            await session.exec(select(AuditEntry).where(col(AuditEntry.action).startswith("identity.")))
        ).all()
    assert [(a.action, a.detail.get("previous_user_id")) for a in audit] == [
        ("identity.link", auto_id),
        ("identity.link", None),
        ("identity.unlink", None),
    ]


async def _conversation(
    resources: Resources, cid: str, channel_id: int, user_id: int | None, minutes_ago: int, texts: list[str]
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    async with resources.sessions() as session:
        session.add(
            Conversation(
                id=cid,
                channel_id=channel_id,
                scope_key=f"dingtalk:{cid}",
                user_id=user_id,
                last_activity_at=at,
            )
        )
        await session.flush()
        for i, text in enumerate(texts):
            role = "user" if i % 2 == 0 else "assistant"
            session.add(
                Message(
                    conversation_id=cid,
                    role=role,
                    content=text,
                    run_id=f"{cid}-{i // 2}",
                    created_at=at + timedelta(seconds=i),
                )
            )
        await session.commit()


async def test_conversations_are_listed_read_and_closed(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    one = await create_channel(client, "one", enabled=False)
    two = await create_channel(client, "two", enabled=False)
    user_id, _ = await _auto_user(resources, "staff-1", "staff-1", "One")
    await _conversation(resources, "c-old", one["id"], user_id, 30, ["hi", "hello!"])
    await _conversation(resources, "c-new", one["id"], None, 1, ["what's up?", "not much", "ok"])
    await _conversation(resources, "c-two", two["id"], user_id, 10, [])

    listed = await client.get("/api/v1/conversations")
    assert [c["id"] for c in listed.json()] == ["c-new", "c-two", "c-old"]
    assert [c["message_count"] for c in listed.json()] == [3, 0, 2]
    assert listed.headers["x-total-count"] == "3"
    by_channel = (await client.get("/api/v1/conversations", params={"channel_id": one["id"]})).json()
    assert [c["id"] for c in by_channel] == ["c-new", "c-old"]
    by_user = (await client.get("/api/v1/conversations", params={"user_id": user_id})).json()
    assert [c["id"] for c in by_user] == ["c-two", "c-old"]

    detail = (await client.get("/api/v1/conversations/c-new")).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "what's up?"),
        ("assistant", "not much"),
        ("user", "ok"),
    ]
    assert detail["closed_at"] is None
    assert (await client.get("/api/v1/conversations/nope")).status_code == 404

    closed = await client.post("/api/v1/conversations/c-new/close")
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    again = await client.post("/api/v1/conversations/c-new/close")
    assert again.json()["closed_at"] == closed.json()["closed_at"]  # closing twice changes nothing
    assert (await client.post("/api/v1/conversations/nope/close")).status_code == 404
    open_ones = (await client.get("/api/v1/conversations", params={"open": "true"})).json()
    assert [c["id"] for c in open_ones] == ["c-two", "c-old"]
    closed_ones = (await client.get("/api/v1/conversations", params={"open": "false"})).json()
    assert [c["id"] for c in closed_ones] == ["c-new"]
    async with resources.sessions() as session:
        [audit] = (
            await session.exec(select(AuditEntry).where(col(AuditEntry.action) == "conversation.close"))
        ).all()
    assert audit.target == "conversation:c-new"
