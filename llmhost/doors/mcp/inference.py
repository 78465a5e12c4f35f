"""Inference tools: ``chat``, ``complete`` and ``embed``, on any model or route name, each call a
request through the pipeline (door ``mcp``) like any HTTP dialect's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from llmhost.core.types import ChatMessage, EmbedRequest, InferenceRequest, Result, Sampling
from llmhost.doors.mcp.gate import Registrar, current
from llmhost.errors import RequestError
from llmhost.service import Service

__all__ = ["AUTO_ROUTE", "register", "resolve_model"]

AUTO_ROUTE = "auto"  # a route of this name answers calls that name no model


class Message(BaseModel):
    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="What they say.")


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Answer(BaseModel):
    model: str = Field(description="The model or route name the call was made on.")
    served_by: str = Field(description="provider/model that answered.")
    text: str = Field(description="The generated text.")
    finish_reason: str = Field(description="stop, length or tool_calls.")
    usage: UsageOut


class EmbeddingOut(BaseModel):
    model: str
    served_by: str
    dimensions: int
    vectors: list[list[float]] = Field(description="One vector per input, in order.")
    prompt_tokens: int


def resolve_model(service: Service, model: str | None) -> str:
    """The model a call is made on: the one named; else the ``auto`` route if configured; else the
    default model; else the only loaded one."""
    if model:
        return model
    if AUTO_ROUTE in service.gateway.routes:
        return AUTO_ROUTE
    if service.settings.default_model:
        return service.settings.default_model
    loaded = service.models.loaded()
    if len(loaded) == 1:
        return loaded[0].name
    raise RequestError("name a model: there is no default model and no 'auto' route", param="model")


MaxTokens = Annotated[int | None, Field(ge=1, le=32768, description="Most tokens to generate.")]
Temperature = Annotated[float | None, Field(ge=0.0, le=2.0, description="Sampling temperature.")]
Stop = Annotated[list[str] | None, Field(max_length=4, description="Stop sequences.")]
Seed = Annotated[int | None, Field(description="Seed for repeatable sampling.")]
Model = Annotated[
    str | None,
    Field(description="A model or route name (list_models); omitted: the 'auto' route or the default."),
]


def _sampling(
    max_tokens: int | None, temperature: float | None, stop: list[str] | None, seed: int | None
) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=temperature, stop=tuple(stop or ()), seed=seed)


def register(reg: Registrar, service: Service) -> None:
    async def chat(
        messages: Annotated[list[Message], Field(min_length=1, description="The conversation so far.")],
        model: Model = None,
        max_tokens: MaxTokens = 256,
        temperature: Temperature = None,
        stop: Stop = None,
        seed: Seed = None,
    ) -> Answer:
        """Ask a model: the messages go through the model's chat template; returns its answer."""
        name = resolve_model(service, model)
        request = InferenceRequest(
            "chat",
            name,
            messages=tuple(ChatMessage(m.role, m.content) for m in messages),
            sampling=_sampling(max_tokens, temperature, stop, seed),
        )
        return _answer(name, await service.pipeline.run(current(), request))

    async def complete(
        prompt: Annotated[str, Field(min_length=1, description="Raw text for the model to continue.")],
        model: Model = None,
        max_tokens: MaxTokens = 256,
        temperature: Temperature = None,
        stop: Stop = None,
        seed: Seed = None,
    ) -> Answer:
        """Continue a raw prompt (no chat template), as a base model is meant to be used."""
        name = resolve_model(service, model)
        request = InferenceRequest(
            "completion", name, prompt=prompt, sampling=_sampling(max_tokens, temperature, stop, seed)
        )
        return _answer(name, await service.pipeline.run(current(), request))

    async def embed(
        inputs: Annotated[list[str], Field(min_length=1, max_length=256, description="Texts to embed.")],
        model: Model = None,
    ) -> EmbeddingOut:
        """Embedding vectors for texts, one per input."""
        name = resolve_model(service, model)
        result = await service.pipeline.embed(current(), EmbedRequest(name, tuple(inputs)))
        return EmbeddingOut(
            model=name,
            served_by=result.target,
            dimensions=len(result.vectors[0]) if result.vectors else 0,
            vectors=result.vectors,
            prompt_tokens=result.usage.prompt_tokens,
        )

    for fn, title in ((chat, "Chat with a model"), (complete, "Complete a prompt"), (embed, "Embed texts")):
        reg.tool(fn, scope="inference", title=title, inference=True, read_only=True, open_world=False)


def _answer(name: str, result: Result) -> Answer:
    choice = result.choices[0]
    usage = result.usage
    return Answer(
        model=name,
        served_by=result.target,
        text=choice.text,
        finish_reason=choice.finish_reason or "stop",
        usage=UsageOut(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        ),
    )
