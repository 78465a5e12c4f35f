"""The model file and its vocabulary: loading a GGUF with llama.cpp, and the tokenizer helpers that the
generation runner, the embedding runner and prompt preparation share."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import llama_cpp

from llmhost.errors import EngineError, ModelError
from llmhost.native import init_backend

__all__ = ["Vocab", "load_model"]


def load_model(path: Path, n_gpu_layers: int | None) -> Any:
    init_backend()
    params = llama_cpp.llama_model_default_params()
    if n_gpu_layers is None:
        n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    params.n_gpu_layers = 2**31 - 1 if n_gpu_layers < 0 else n_gpu_layers
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelError(f"llama.cpp could not load {path} (see LLMHOST_LLAMA_VERBOSE=1 for details)")
    return model


# Token attributes that make a token "special": llama.cpp matches their text only with parse_special.
_SPECIAL_ATTRS = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
_C_SPACE = " \t\n\v\f\r"  # what C's isspace() strips next to an lstrip/rstrip token


class Vocab:
    """Tokenizer helpers shared by the generation and embedding runners."""

    def __init__(self, model: Any) -> None:
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._attrs: dict[int, int] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError("tokenization failed")
        return list(buf[:n])

    def attr(self, token: int) -> int:
        attr = self._attrs.get(token)
        if attr is None:
            attr = self._attrs[token] = int(llama_cpp.llama_vocab_get_attr(self.vocab, token))
        return attr

    def is_control(self, token: int) -> bool:
        """A control token (BOS, EOS, BERT's ``[CLS]`` and ``[SEP]``): never the text of a request."""
        return bool(self.attr(token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)

    def special_texts(self, text: str) -> set[str]:
        """The texts of the control (and unknown) tokens that ``text`` would turn into if it were
        tokenized with special-token parsing, as a template's markup is."""
        ids = set(self.tokenize(text, add_special=False, parse_special=True))
        return {self.token_text(t) for t in ids if self.attr(t) & _SPECIAL_ATTRS}

    def tokenize_literal(self, text: str, literals: Mapping[str, str], *, add_special: bool) -> list[int]:
        """Tokenize ``text`` with special-token parsing, where each key of ``literals`` (a stand-in
        character standing in for user text) reads as its value, tokenized as plain text.

        The text is cut where llama.cpp's own tokenizer would cut it (at each control token, longest
        first, honouring lstrip/rstrip), the stand-ins are put back in the plain pieces, and each
        piece is tokenized on its own -- as llama.cpp tokenizes each piece between special tokens, so
        with no stand-ins the result is the same as ``tokenize(text, parse_special=True)``.
        """
        specials: dict[str, int] = {}
        for t in self.tokenize(text, add_special=False, parse_special=True):
            if self.attr(t) & _SPECIAL_ATTRS:
                specials.setdefault(self.token_text(t), t)
        fragments: list[str | int] = [text]
        for special in sorted(specials, key=len, reverse=True):
            token = specials[special]
            lstrip = bool(self.attr(token) & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP)
            rstrip = bool(self.attr(token) & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int):
                    split.append(fragment)
                    continue
                start = 0
                while (match := fragment.find(special, start)) >= 0:
                    left = fragment[start:match]
                    if lstrip:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        split.append(left)
                    split.append(token)
                    start = match + len(special)
                    if rstrip:
                        while start < len(fragment) and fragment[start] in _C_SPACE:
                            start += 1
                if start < len(fragment):
                    split.append(fragment[start:])
            fragments = split
        tokens: list[int] = []
        if add_special and self.adds_bos:
            tokens.append(self.bos)
        for fragment in fragments:
            if isinstance(fragment, int):
                tokens.append(fragment)
                continue
            for mark, literal in literals.items():
                fragment = fragment.replace(mark, literal)
            tokens += self.tokenize(fragment, add_special=False, parse_special=False)
        if add_special and self.adds_eos:
            tokens.append(self.eos)
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens render as nothing."""
        cached = self._pieces.get(token)
        if cached is None:
            # A buffer per call: prompt preparation in worker threads reads pieces too.
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, big, len(big), 0, False)
                cached = big.raw[:n]
            else:
                cached = buf.raw[:n]
            self._pieces[token] = cached
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return eog

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    @property
    def adds_eos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""
