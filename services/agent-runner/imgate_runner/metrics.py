"""The agent-runner's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

from imgate_common.metrics import LATENCY_BUCKETS

RUNS_STARTED = Counter("imgate_runs_started", "Runs whose model call began, by provider", ["provider"])
RUNS_FINISHED = Counter(
    "imgate_runs_finished",
    "Runs that ended, by provider, outcome (completed, failed, cancelled) and failure category",
    ["provider", "outcome", "category"],
)
RUNS_IN_FLIGHT = Gauge("imgate_runs_in_flight", "Runs this process is executing now")
RUN_WAIT = Histogram(
    "imgate_run_wait_seconds",
    "From the run request being made to a runner starting it: bus time plus any wait behind the "
    "conversation's previous answer",
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "imgate_run_time_to_first_token_seconds",
    "From asking the model to its first token",
    ["provider"],
    buckets=LATENCY_BUCKETS,
)
RUN_DURATION = Histogram(
    "imgate_run_duration_seconds",
    "From starting a run to its final event, by provider and outcome",
    ["provider", "outcome"],
    buckets=LATENCY_BUCKETS,
)
MODEL_TOKENS = Counter(
    "imgate_model_tokens", "Tokens the models reported, by provider and kind", ["provider", "kind"]
)
REDELIVERED_RUNS = Counter(
    "imgate_runs_redone", "Runs taken again after a runner stopped or died mid-run (attempt > 1)"
)
LOCKS_LOST = Counter(
    "imgate_run_locks_lost",
    "Runs that found their conversation's lock held by another run (it expired while they waited "
    "or streamed): one conversation had two answers in the making at once",
)
