"""BoundedSet: memory that does not grow with traffic."""

from imgate_common.bounded import BoundedSet


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_oldest_go_first_past_the_cap() -> None:
    ids = BoundedSet(3)
    for n in range(10):
        ids.add(f"run-{n}")
    assert len(ids) == 3
    assert "run-9" in ids and "run-7" in ids and "run-6" not in ids


def test_adding_again_makes_an_item_young() -> None:
    ids = BoundedSet(2)
    ids.add("a")
    ids.add("b")
    ids.add("a")
    ids.add("c")
    assert "a" in ids and "b" not in ids


def test_items_expire_after_their_ttl() -> None:
    clock = Clock()
    ids = BoundedSet(100, ttl_s=60, clock=clock)
    ids.add("old")
    clock.now = 30
    ids.add("new")
    clock.now = 61
    assert "old" not in ids and "new" in ids
    assert len(ids) == 1
    ids.discard("new")
    assert len(ids) == 0
