"""What ``/api/tags``, ``/api/show`` and ``/api/ps`` say about models, in Ollama's shapes.

Local models are described from their registry record and GGUF metadata; the gateway's route names
(``service.gateway.public_models()``) are listed too, so ``/api/tags`` names the same models as
``/v1/models``. ``/api/ps`` entries carry Ollama's fields plus llmhost's own (slots, queue, idle time,
keep-alive), which ``llmhost ps`` prints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from llmhost.apps.agents.spec import AgentSpec
from llmhost.doors.ollama.gotime import GO_MAX_SECONDS, rfc3339
from llmhost.models.gguf_check import inspect_gguf_cached
from llmhost.models.manager import LoadedModel
from llmhost.models.registry import ModelRecord
from llmhost.models.templates import resolve_chat_template
from llmhost.service import Service

__all__ = [
    "capabilities",
    "describe_loaded",
    "expires_in",
    "hex_digest",
    "human_number",
    "model_details",
    "name_digest",
    "route_details",
    "show_model",
    "show_route",
    "tags",
]


def _known(service: Service, name: str) -> bool:
    return (
        name in service.gateway.public_models()
        or service.gateway.is_local_model(name)
        or service.agents.find(name) is not None
    )


def known_name(service: Service, name: str) -> str | None:
    """The name llmhost has for ``name``: itself, or with Ollama's default tag ``:latest`` added or
    dropped (``ollama run x`` means ``x:latest``); ``None`` when neither is a model, route or agent."""
    if not name or _known(service, name):
        return name or None
    other = name.removesuffix(":latest") if name.endswith(":latest") else f"{name}:latest"
    return other if other and _known(service, other) else None


def human_number(n: int) -> str:
    """A parameter count the way Ollama prints it: ``8B``, ``1.5B``, ``270.27M``, ``12K``."""
    for size, suffix, digits in ((10**9, "B", 1), (10**6, "M", 2), (10**3, "K", 0)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.{digits}f}{suffix}"
    return str(n)


def hex_digest(digest: str) -> str:
    """A file's digest as Ollama writes it: the hex alone, without llmhost's ``sha256:``."""
    return digest.removeprefix("sha256:")


def name_digest(kind: Literal["route", "agent"], name: str) -> str:
    """A stable digest for what has no file of its own: the sha256 of its kind and name."""
    return hashlib.sha256(f"llmhost-{kind}:{name}".encode()).hexdigest()


def model_details(record: ModelRecord) -> dict[str, Any]:
    arch = record.architecture
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": human_number(record.parameter_count),
        "quantization_level": record.quantization,
    }


def route_details() -> dict[str, Any]:
    """A gateway route has no file of its own: empty details, as Ollama gives remote models."""
    return {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }


def _local_names(service: Service) -> list[ModelRecord]:
    """Local models whose name is not taken by a gateway route (the route answers for that name)."""
    routes = set(service.gateway.public_models())
    return [r for r in service.list_models() if r.name not in routes]


def tags(service: Service) -> list[dict[str, Any]]:
    """``/api/tags``' models: local ones, then the gateway's routes and the agents."""
    out = [
        {
            "name": r.name,
            "model": r.name,
            "modified_at": rfc3339(r.created_at.timestamp()),
            "size": r.size_bytes,
            "digest": hex_digest(r.digest),
            "details": model_details(r),
        }
        for r in _local_names(service)
    ]
    started = rfc3339(service.started_at)
    kinds: list[tuple[Literal["route", "agent"], str]] = [
        *(("route", n) for n in service.gateway.public_models()),
        *(("agent", a.name) for a in service.agents.all()),
    ]
    out += [
        {
            "name": n,
            "model": n,
            "modified_at": started,
            "size": 0,
            "digest": name_digest(kind, n),
            "details": route_details(),
        }
        for kind, n in kinds
    ]
    return out


def _go_value(value: object) -> str:
    """A parameter value the way Go's ``%#v`` prints it in Ollama's ``parameters`` text."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def show_model(service: Service, name: str) -> dict[str, Any] | None:
    """``/api/show`` for a local model, or ``None`` when ``name`` is not one."""
    if name in service.gateway.public_models():
        return None
    record = service.registry.find(name)
    if record is None:
        return None
    settings = service.settings
    ms = settings.model_settings(name)
    template = resolve_chat_template(record.architecture, record.chat_template, ms.chat_template)
    info = inspect_gguf_cached(record.path, record.digest, settings.data_dir / "cache" / "gguf-info")
    model_info: dict[str, Any] = {
        k: v for k, v in info.metadata.items() if k not in {"general.name", "tokenizer.chat_template"}
    }
    model_info["general.parameter_count"] = record.parameter_count
    params: list[tuple[str, object]] = [("stop", s) for s in template.stop]
    params += list(ms.sampling_defaults().items())
    if ms.speculative == "ngram":  # the option a request can send (llmhost's own; Ollama has none)
        params.append(("speculative", "ngram"))
    parameters = "\n".join(f"{k:<30} {_go_value(v)}" for k, v in params)
    modelfile = [
        '# Modelfile generated by "llmhost"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {record.path}",
        f'TEMPLATE """{template.source}"""',
        *(f"PARAMETER {k} {_go_value(v)}" for k, v in params),
    ]
    if record.license:
        modelfile.append(f'LICENSE """{record.license}"""')
    body: dict[str, Any] = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": parameters,
        "template": template.source,
        "details": model_details(record),
        "model_info": model_info,
        "capabilities": capabilities(record, info.metadata),
        "modified_at": rfc3339(record.created_at.timestamp()),
    }
    if record.license:
        body["license"] = record.license
    return body


def capabilities(record: ModelRecord, metadata: Mapping[str, object]) -> list[str]:
    """What ``/api/show`` says a local model can do, judged as Ollama judges it, by what llmhost serves.

    A GGUF with a pooling type is an embedding model (Ollama's test), else a completion model, and tools
    work with every completion model (llmhost describes them in Hermes style where the template has no
    format of its own). Never ``insert`` (``suffix`` is refused), ``vision`` (local models read text
    only) or ``thinking`` (``think`` is refused): a client that reads the list asks for none of them.
    """
    if f"{record.architecture}.pooling_type" in metadata:
        return ["embedding"]
    return ["completion", "tools"]


def show_agent(service: Service, agent: AgentSpec) -> dict[str, Any]:
    """``/api/show`` for an agent (what ``/api/create`` makes): its Modelfile, as Ollama prints a model
    made ``FROM`` another, and its base model's details when that is a local model."""
    sampling = agent.sampling
    params: list[tuple[str, object]] = [
        (key, getattr(sampling, field))
        for key, field in (
            ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
            ("seed", "seed"), ("repeat_penalty", "repeat_penalty"), ("num_predict", "max_tokens"),
        )
        if getattr(sampling, field) is not None
    ]  # fmt: skip
    params += [("stop", s) for s in sampling.stop]
    modelfile = [f"FROM {agent.model}"]
    if agent.system:
        modelfile.append(f'SYSTEM """{agent.system}"""')
    modelfile += [f"PARAMETER {k} {_go_value(v)}" for k, v in params]
    record = None if agent.model in service.gateway.public_models() else service.registry.find(agent.model)
    details = model_details(record) if record is not None else route_details()
    details["parent_model"] = agent.model
    body: dict[str, Any] = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": "\n".join(f"{k:<30} {_go_value(v)}" for k, v in params),
        "template": "",
        "system": agent.system,
        "details": details,
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": rfc3339(service.started_at),
    }
    if agent.description.startswith("License: "):
        body["license"] = agent.description.removeprefix("License: ")
    return body


def show_route(service: Service, name: str) -> dict[str, Any]:
    """``/api/show`` for a gateway route: what the route is, not a file."""
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": route_details(),
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": rfc3339(service.started_at),
    }


def expires_in(m: LoadedModel) -> float:
    """Seconds until ``m`` unloads, as Ollama's ``expires_at`` counts them: for good (``keep_alive`` < 0)
    is the longest Go duration, about 292 years (``ollama ps`` prints "Forever"); a busy model stays at
    least its ``keep_alive`` after its requests end (0: it unloads then, and ``ollama ps`` prints
    "Stopping...")."""
    if m.keep_alive < 0:
        return GO_MAX_SECONDS
    left = m.expires_in
    return min(m.keep_alive if left is None else left, GO_MAX_SECONDS)


def describe_loaded(m: LoadedModel) -> dict[str, Any]:
    """One ``/api/ps`` entry: Ollama's fields, then llmhost's. ``expires_at`` is always a time, as Go's
    ``time.Time`` in Ollama's clients must read it (see :func:`expires_in`)."""
    return {
        "name": m.name,
        "model": m.name,
        "digest": hex_digest(m.record.digest),
        "size": m.memory_bytes,
        "size_vram": m.memory_bytes if m.on_gpu else 0,
        "expires_at": rfc3339(time.time() + expires_in(m)),
        "details": model_details(m.record),
        "context_length": m.runner.n_ctx_slot if m.engine is None else m.key.n_ctx,
        "slots": m.runner.n_slots,
        "slots_busy": m.engine.busy_slots if m.engine is not None else 0,
        "waiting": m.engine.waiting if m.engine is not None else 0,
        "idle_seconds": round(m.idle_seconds, 1),
        "keep_alive": m.keep_alive,
        "loaded_at": dt.datetime.fromtimestamp(m.loaded_at, dt.UTC).isoformat(),
        "load_seconds": round(m.load_seconds, 3),
    }
