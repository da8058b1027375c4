"""A set that cannot grow with traffic: at most `max_items`, each kept at most `ttl_s`.

For ids a process remembers about work that may never come back to it (a cancelled run that
another process ran, a card another replica closed): the oldest are forgotten first, so memory
stays flat however long the process lives. What is forgotten must be harmless to forget.
"""

import time
from collections import OrderedDict
from collections.abc import Callable


class BoundedSet:
    def __init__(
        self, max_items: int, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, float] = OrderedDict()  # item → when added, oldest first

    def add(self, item: str) -> None:
        self._items[item] = self._clock()
        self._items.move_to_end(item)
        self._expire()
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def discard(self, item: str) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        self._expire()
        return item in self._items

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def _expire(self) -> None:
        if self.ttl_s is None:
            return
        oldest = self._clock() - self.ttl_s
        while self._items:
            item, added = next(iter(self._items.items()))
            if added > oldest:
                break
            del self._items[item]
