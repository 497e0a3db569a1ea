#!/usr/bin/env bash
# Install panza-local into ./.venv (or $PANZA_VENV). Usage: bash install.sh [--dev]
#   --dev   also the test tools and the mlx CPU backend (what the test suite needs)
# llama-cpp-python is compiled from source by pip. On x86-64 we build it portably: GGML_NATIVE=OFF
# (a native build can die with SIGILL on virtual CPUs that report instructions they do not run) and
# exactly the SIMD levels this CPU has. On Apple Silicon the default build (Metal) is right.
set -euo pipefail
cd "$(dirname "$0")"
venv="${PANZA_VENV:-.venv}"
extras="mlx"
[ "${1:-}" = "--dev" ] && extras="mlx,dev"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "panza-local needs Python >= 3.10" >&2; exit 1; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip wheel setuptools

# A CMAKE_ARGS of your own is used as you gave it. Else: no mtmd (llama-cpp-python's image and audio library
# for multimodal chat, which panza never loads; the build takes 189 s instead of 225 s on 2 cores without it),
# and on x86-64 the flags below.
if [ -z "${CMAKE_ARGS:-}" ]; then
  args="-DLLAVA_BUILD=OFF"
  if [ "$(uname -m)" = "x86_64" ]; then
    flags=$(grep -m1 -E '^flags' /proc/cpuinfo 2>/dev/null || true)
    args="$args -DGGML_NATIVE=OFF"
    # VNNI and BF16 are plain AVX-512 encodings (faster int8 dot products in prompt processing). AMX stays
    # off: on a Xeon VM that reports amx_tile its tile instructions died with SIGILL (tileloadd in ggml's AMX
    # matmul), which is what kills a native build on such machines.
    for f in avx avx2 fma f16c avx512_vnni avx512_bf16; do
      case " $flags " in *" $f "*) args="$args -DGGML_$(echo $f | tr a-z A-Z)=ON";; esac
    done
    case " $flags " in *" avx512f "*) args="$args -DGGML_AVX512=ON";; esac
  fi
  export CMAKE_ARGS="$args"
fi
echo "building llama-cpp-python with CMAKE_ARGS=${CMAKE_ARGS:-<default>} (about 4 minutes on 2 cores, once)"
# torch 2.13 is the CPU build this project is tested with; a plain `torch` would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install "torch==2.13.0" 2>/dev/null || true
"$venv/bin/python" -m pip install -e ".[$extras]"
# The IMAP tests run a real local Dovecot (they skip, saying so, where it cannot be installed).
if [ "${1:-}" = "--dev" ] && ! command -v dovecot >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd openssl >/dev/null) \
    || echo "note: could not install dovecot-imapd; the IMAP tests will be skipped"
fi
echo "installed: $venv/bin/panza"
