"""Provider instances by name, one each per process."""

from imgate_runner.providers.anthropic import AnthropicProvider
from imgate_runner.providers.base import ModelProvider
from imgate_runner.providers.local import LocalProvider
from imgate_runner.providers.openai import OpenAIProvider
from imgate_runner.settings import RunnerSettings


def build_providers(settings: RunnerSettings) -> dict[str, ModelProvider]:
    providers: list[ModelProvider] = [
        LocalProvider(settings.local_model_path, settings.local_context_tokens, settings.local_threads),
        OpenAIProvider(settings.provider_clients_max),
        AnthropicProvider(settings.provider_clients_max),
    ]
    table: dict[str, ModelProvider] = {}
    for provider in providers:
        if provider.name in table:
            raise ValueError(f"two providers are named {provider.name!r}")
        table[provider.name] = provider
    return table
