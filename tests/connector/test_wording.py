"""Splitting long answers: parts fit, breaks are natural, code blocks survive, nothing is lost."""

import random

import pytest

from imgate_connector.wording import split_long, wording_for


def words(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon"]) for _ in range(n))


def test_short_text_is_one_part() -> None:
    assert split_long("hello", 100) == ["hello"]


@pytest.mark.parametrize("limit", [40, 100, 333])
def test_parts_fit_and_keep_every_word(limit: int) -> None:
    text = "\n\n".join(words(30, seed) for seed in range(8))
    parts = split_long(text, limit)
    assert len(parts) > 1
    assert all(len(p) <= limit for p in parts)
    assert " ".join(parts).split() == text.split()


def test_cuts_prefer_paragraphs() -> None:
    text = "a" * 60 + "\n\n" + "b" * 60
    assert split_long(text, 100) == ["a" * 60, "b" * 60]


def test_a_growing_text_keeps_its_earlier_parts() -> None:
    text = "\n".join(words(12, seed) for seed in range(30))
    first = split_long(text[: len(text) // 2], 200)
    whole = split_long(text, 200)
    assert whole[: len(first) - 1] == first[:-1]


def test_a_code_block_cut_in_two_is_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})" for i in range(40))
    text = f"Here:\n\n```python\n{code}\n```\n\nDone."
    parts = split_long(text, 120)
    assert len(parts) > 2
    for part in parts:
        assert part.count("```") % 2 == 0, part
    assert parts[1].startswith("```python\n")


def test_unbroken_text_is_cut_hard() -> None:
    assert split_long("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_wording_follows_the_channel_language() -> None:
    assert "排队" in wording_for("zh-CN").queued
    assert "Queued" in wording_for("en-US").queued
    assert wording_for(None) == wording_for("xx")
