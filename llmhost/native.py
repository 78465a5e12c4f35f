"""The llama.cpp library as this process loaded it: backend initialisation (once), its log routed to
Python logging, and what the build supports.

Below both ``engine/`` (which runs models) and ``models/`` (whose hardware report names the build), so
neither has to import the other for it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

import llama_cpp

__all__ = ["gpu_offload_supported", "init_backend", "llama_log"]

_backend_lock = threading.Lock()
_backend_ready = False

llama_log = logging.getLogger("llmhost.llama_cpp")
# ggml's log levels: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line).
_GGML_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.DEBUG


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _route_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's log to Python logging (hidden unless LLMHOST_LLAMA_VERBOSE=1)."""
    global _last_level
    py_level = _last_level if level == 5 else _GGML_LEVELS.get(level, logging.INFO)
    _last_level = py_level
    if llama_log.isEnabledFor(py_level):
        llama_log.log(py_level, "%s", text.decode("utf-8", errors="replace").rstrip("\n"))


def init_backend() -> None:
    """Initialise llama.cpp once per process, its log routed to ``llmhost.llama_cpp``."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            verbose = bool(os.environ.get("LLMHOST_LLAMA_VERBOSE"))
            if not verbose:
                llama_log.setLevel(logging.CRITICAL)
            llama_cpp.llama_log_set(_route_llama_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, Vulkan ...)."""
    init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())
