"""The storage sanitiser: what databases refuse is dropped, strings fit their columns."""

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import AuditEntry, User
from imgate_common.sanitise import clean_json, clean_text


def test_clean_text_drops_nul_and_lone_surrogates_and_cuts_to_length() -> None:
    assert clean_text("a\x00b\ud800c") == "abc"
    assert clean_text("名字" * 3, 4) == "名字名字"
    assert clean_text("fine", 10) == "fine"


def test_clean_json_cleans_keys_and_values_at_any_depth() -> None:
    assert clean_json({"k\x00": ["v\x00", {"x": "y\x00"}], "n": 1}) == {"k": ["v", {"x": "y"}], "n": 1}


async def test_rows_are_cleaned_as_they_are_flushed(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        session.add(User(username="u\x00", auth_source="dingtalk", display_name="n" * 300))
        session.add(AuditEntry(actor="a", action="x", target="t", detail={"note": "b\x00"}))
        await session.commit()
    async with sessions() as session:
        user = (await session.exec(select(User))).one()
        entry = (await session.exec(select(AuditEntry))).one()
    assert (user.username, user.display_name) == ("u", "n" * 200)
    assert entry.detail == {"note": "b"}
