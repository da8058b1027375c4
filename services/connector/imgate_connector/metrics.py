"""The connector's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

from imgate_common.metrics import LATENCY_BUCKETS

INBOUND = Counter(
    "imgate_inbound_messages",
    "Bot messages taken from the platform, by platform, message type and result "
    "(published, duplicate, malformed, publish_failed, deferred)",
    ["platform", "type", "result"],
)
ACK_SECONDS = Histogram(
    "imgate_inbound_ack_seconds",
    "From a bot message frame arriving to its ACK going out (the bus confirmed it in between)",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
DEDUP_HITS = Counter(
    "imgate_inbound_dedup_hits", "Redelivered messages the bus dropped as already stored", ["platform"]
)
PLATFORM_API_CALLS = Counter(
    "imgate_platform_api_calls",
    "Calls to the platform's OpenAPI (cards, robot messages, tokens, media), by API and HTTP status",
    ["platform", "api", "status"],
)
RATE_LIMITED = Counter(
    "imgate_card_rate_limited", "Card API calls refused by the platform's QPS limit (403/429)", ["platform"]
)
FALLBACKS = Counter(
    "imgate_fallback_replies",
    "Answers sent as plain messages because the card could not show them",
    ["platform"],
)
FIRST_TEXT_SECONDS = Histogram(
    "imgate_first_visible_text_seconds",
    "From the message arriving to the first answer text shown on its card",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
FINAL_SECONDS = Histogram(
    "imgate_final_answer_seconds",
    "From the message arriving to its final answer being shown",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
CHANNEL_UP = Gauge(
    "imgate_channel_connected",
    "1 while this replica holds the channel's platform connection open, 0 while it tries to",
    ["channel_id"],
)
RECONNECTS = Counter(
    "imgate_channel_reconnects", "Platform connections lost and opened again", ["channel_id"]
)
LEASE_CHANGES = Counter(
    "imgate_channel_lease_changes",
    "Channel ownership changes on this replica: acquired, released, lost, taken_over",
    ["change"],
)
CHANNELS_OWNED = Gauge("imgate_channels_owned", "Channels this replica runs now")
UNDELIVERABLE = Counter(
    "imgate_replies_undeliverable",
    "Final answers the platform would not take through any path (card, sessionWebhook, robot "
    "API) for as long as they were tried: filed as dead letters",
    ["platform"],
)
CARDS_MENDED = Counter(
    "imgate_cards_mended",
    "Cards a failed call left open, closed later once the platform took card calls again "
    "(closed), or given up on after the retry window (left_open)",
    ["platform", "result"],
)
CARD_MODE = Gauge(
    "imgate_card_mode",
    "How an app's answers use its card budget now: 0 full (open, stream, final), 1 thin (fewer "
    "streaming updates), 2 one-call (no thinking card: each new answer is one message)",
    ["app"],
)
CARD_CALL_WAIT_SECONDS = Histogram(
    "imgate_card_call_wait_seconds",
    "How long a card call waited for its turn under the app's rate, by class (final, open, stream)",
    ["cls"],
    buckets=LATENCY_BUCKETS,
)
CARD_BUDGET_ROUND_TRIPS = Counter(
    "imgate_card_budget_round_trips",
    "Redis round trips of the card-call schedulers (reserving several slots each, handing unused "
    "ones back, slowing down after throttling)",
)
CARD_SLOTS_UNUSED = Counter(
    "imgate_card_slots_unused",
    "Reserved card-call slots no call used (their time passed, or throttling voided them)",
)
ONE_CALL_ANSWERS = Counter(
    "imgate_one_call_answers",
    "Answers sent as one plain message without a card because the app's card budget had no "
    "room for a card's open and final calls (one-call mode)",
    ["platform"],
)
