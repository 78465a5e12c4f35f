"""Per-sequence sampler chains built from :class:`SamplingParams` with llama.cpp's samplers.

Order follows llama.cpp's server: logit bias, penalties, grammar, then top-k, top-p, min-p, temperature
and the final draw. Each sequence owns its chain (and its seeded RNG), so a seeded request samples the
same tokens whether it runs alone or in a busy batch.
"""

from __future__ import annotations

import ctypes
import random
from typing import Any

import llama_cpp

from llmhost.engine.types import SamplingParams
from llmhost.errors import RequestError

__all__ = ["build_sampler_chain"]


def build_sampler_chain(vocab: Any, n_vocab: int, n_ctx: int, params: SamplingParams) -> Any:
    """Return a new llama.cpp sampler chain; the caller frees it with ``llama_sampler_free``."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                if not 0 <= token < n_vocab:
                    raise RequestError(f"logit_bias token {token} is not in the vocabulary", "logit_bias")
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = bias
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, n_ctx, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                raise RequestError("the grammar could not be parsed", "response_format")
            add(chain, grammar)
        if params.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        if params.temperature != 1.0:
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(chain, llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed & 0xFFFFFFFF).value))
        return chain
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise


def add(chain: Any, sampler: Any) -> None:
    """Add a sampler to a chain, which takes ownership of it."""
    llama_cpp.llama_sampler_chain_add(chain, sampler)
