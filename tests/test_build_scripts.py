"""The llama.cpp build flags: the caller's CMAKE_ARGS kept, AMX off on x86 (see scripts/llama-wheel.sh)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cmake_args(cmake_args: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    if cmake_args is not None:
        env["CMAKE_ARGS"] = cmake_args
    out = subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(ROOT / 'scripts/llama-cmake-args.sh'))}; llama_cmake_args"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return shlex.split(out.stdout)  # what scikit-build-core does with CMAKE_ARGS


def test_the_callers_cmake_args_come_first_and_stay_whole() -> None:
    args = cmake_args("-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90")
    assert args[:2] == ["-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=90"]


def compiler_knows_no_amx() -> bool:
    probe = subprocess.run(
        ["cc", "-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16", "-x", "c", "-o", os.devnull, "-"],
        input="int main(void){return 0;}",
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AMX flags are x86 only")
def test_amx_is_left_off_on_x86_when_the_compiler_knows_the_flags() -> None:
    if not compiler_knows_no_amx():
        pytest.skip("this compiler has no -mno-amx-* flags (the script then adds none)")
    args = cmake_args(None)
    assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in args
    assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in args


def test_the_wheel_script_names_the_pinned_version() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"llama-cpp-python==' in pyproject  # scripts/llama-wheel.sh reads the pin from here
    assert os.access(ROOT / "scripts/llama-wheel.sh", os.X_OK)
