# Sourced by scripts/llama-wheel.sh and bench/build_llama_server.sh: the CMake arguments llama.cpp is
# built with, the caller's CMAKE_ARGS (e.g. -DGGML_CUDA=on) plus, on x86 with a compiler that knows
# them, flags that keep -march=native from turning on Intel AMX (see scripts/llama-wheel.sh for why).
llama_cmake_args() {
    local args="${CMAKE_ARGS:-}"
    local cc="${CC:-cc}"
    case "$(uname -m)" in
        x86_64|amd64)
            if echo 'int main(void){return 0;}' | "$cc" -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 \
                    -x c -o /dev/null - >/dev/null 2>&1; then
                local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
                args="$args -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
            fi
            ;;
    esac
    echo "${args# }"
}
