"""Just enough PromQL reading to check a query against the series the services define.

Finds the series a query selects (with the labels its matchers name) and the labels it groups
by. Not a parser: it relies on the queries being written plainly, which the checks on it keep
true (an unknown word is reported, never skipped).
"""

import re
from dataclasses import dataclass, field

KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"})
BINARY = frozenset({"and", "or", "unless"})
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
RANGE = re.compile(r"\[[^\]]*\]")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
NUMBER = re.compile(r"^\d")


@dataclass
class Query:
    expr: str
    # series name → label names its matchers use (one entry per selector)
    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)

    @property
    def series(self) -> set[str]:
        return {name for name, _ in self.selectors}


def read(expr: str) -> Query:
    query = Query(expr)
    # Label values go first (a regex value may hold any word or bracket), then range durations.
    text = RANGE.sub("", STRING.sub('""', expr))
    for labels in GROUPING.findall(text):
        query.grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    for match in SELECTOR.finditer(text):
        name, braces = match.group(1), match.group(2)
        following = text[match.end() :].lstrip()
        if following.startswith("(") and not braces:
            continue  # a function or aggregation
        if name in KEYWORDS or name in BINARY or NUMBER.match(name):
            continue
        if name.startswith("__"):  # $__range and friends outside brackets
            continue
        matchers = frozenset(MATCHER.findall(braces or ""))
        query.selectors.append((name, matchers))
    return query
