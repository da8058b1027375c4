"""The one catalog of what the gateway says in a chat."""

import string

import pytest

from imgate_common.errors import FailureCategory
from imgate_common.wording import SENTENCES, failure_sentence, language_of, say


def _fields(sentence: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(sentence) if name}


def test_every_sentence_exists_in_every_language_with_the_same_fields() -> None:
    keys = {language: set(table) for language, table in SENTENCES.items()}
    assert keys["zh"] == keys["en"], keys["zh"] ^ keys["en"]
    for key in keys["zh"]:
        assert _fields(SENTENCES["zh"][key]) == _fields(SENTENCES["en"][key]), key
        assert all(SENTENCES[language][key].strip() for language in SENTENCES), key


@pytest.mark.parametrize("category", list(FailureCategory))
def test_every_failure_category_has_a_sentence_in_each_language(category: FailureCategory) -> None:
    assert failure_sentence(category, "zh-CN") != failure_sentence(category, "en-US")
    assert any("\u4e00" <= c <= "\u9fff" for c in failure_sentence(category, "zh-CN")), category


def test_a_chinese_channel_reads_chinese_and_an_unknown_language_reads_chinese() -> None:
    assert language_of("zh-TW") == language_of(None) == language_of("xx-YY") == "zh"
    assert language_of("EN-gb") == "en"
    assert say("stopped", "zh-CN") == "（已停止）"
    assert say("queued", "en-US", position=2) == "Queued: 2 message(s) ahead of this one…"
