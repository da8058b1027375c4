"""The router's Prometheus metrics (FastStream's middleware adds the bus-level ones)."""

from prometheus_client import Counter, Histogram

from imgate_common.metrics import LATENCY_BUCKETS

# Message types worth a label of their own (DingTalk's msgtype values and the normalized kinds);
# any other type a platform sends is counted as "other", so senders cannot grow the series.
KNOWN_TYPES = frozenset(
    {"text", "richText", "picture", "audio", "file", "video", "markdown", "image", "rich_text", "unsupported"}
)


def type_label(platform_type: str | None) -> str:
    return platform_type if platform_type in KNOWN_TYPES else "other"


MESSAGES = Counter(
    "imgate_router_messages",
    "Inbound messages routed, by platform, message type and what became of them",
    ["platform", "type", "result"],
)
DEDUP_HITS = Counter("imgate_router_dedup_hits", "Inbound messages dropped as already routed", ["platform"])
IDENTITY_LOOKUPS = Counter(
    "imgate_router_identity_lookups",
    "Sender → company user resolutions, by mapper and outcome",
    ["mapper", "result"],
)
IDENTITY_SECONDS = Histogram(
    "imgate_router_identity_lookup_seconds",
    "Time to resolve the sender to a company user (cache, directory, database)",
    ["mapper"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_ADMISSIONS = Counter(
    "imgate_router_queue_admissions",
    "Run requests offered to their conversation's queue: started at once, queued, or refused (full)",
    ["outcome"],
)
QUEUE_POSITION = Histogram(
    "imgate_router_queue_position",
    "Position of a run that had to wait behind its conversation's running answer",
    buckets=(1, 2, 3, 4, 5, 10, 20),
)
ROUTE_SECONDS = Histogram(
    "imgate_router_route_seconds",
    "Time from taking an inbound message to its run request (or reply) being on the bus",
    buckets=LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "imgate_router_rate_limited",
    "Inbound messages answered with a rate-limit sentence and not run, by the limit they hit",
    ["scope"],
)
