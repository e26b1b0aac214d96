#!/usr/bin/env bash
# Laminar set-up and entry points. Idempotent: re-running only redoes what changed.
#
#   ./build.sh [setup]        venv .venv + tritonserver + perf_analyzer, aiperf and genai-perf
#                             wrappers + demo checkpoint (trained on its corpus: a CPU minute or
#                             two, redone only when backend_src/laminar/demo/ changes)
#   ./build.sh serve [ARGS]   tritonserver on model_repository/ (extra ARGS go to tritonserver), and
#                             the OpenAI-compatible API at http://localhost:9000/v1 beside it
#                             (LAMINAR_OPENAI_PORT sets its port; LAMINAR_OPENAI_PORT=off turns it off)
#   ./build.sh test [ARGS]    set up, lint (ruff), then pytest tests (extra ARGS go to pytest)
#   ./build.sh client PROMPT  stream PROMPT through perf/client.py (see --help for options)
#
# Serving options are environment variables read by model_repository/laminar/1/model.py:
# LAMINAR_<PARAMETER> overrides the config.pbtxt parameter of that name, e.g.
#   LAMINAR_MODEL=/ckpt/Qwen3-30B-A3B LAMINAR_DEVICE=cuda LAMINAR_DTYPE=bfloat16 ./build.sh serve
# Without LAMINAR_MODEL the embedded demo checkpoint (demo_model/) is served on CPU.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=$ROOT/.venv
TOOLS=$ROOT/.cache/tools
PY_PINS=("numpy==1.26.4" "tritonclient[all]==2.73.0" "nvidia-pytriton==0.7.0" "pytest==9.2.*"
         "safetensors==0.8.0" "tokenizers==0.23.3" "transformers==5.23.0" "triton==3.9.0"
         "nvidia-ml-py==13.615.71" "matplotlib==3.11.2"
         "fastapi==0.163.2" "uvicorn==0.54.0" "openai==3.51.0" "ruff==0.17.6" "xgrammar==0.2.8")
TORCH_PIN="torch==2.13.0"
PA_PIN="perf-analyzer==2.60.0"
AIPERF_PIN="aiperf==0.13.0"
GENAI_PERF_PIN="genai-perf==0.0.16"
# Attention libraries, installed only where torch has CUDA and sees a GPU (laminar_kernels picks
# per path from kernels/configs/attention.json, falling back to our Triton kernels). flashinfer-cubin
# is its prebuilt kernels (0.6.13 is the last release that has them); cudnn-frontend and the CuTe DSL
# are FlashInfer's own dependencies, pinned here with FlashAttention-4's.
FLASHINFER_VERSION="0.6.13"
ATTENTION_PINS=("flashinfer-python==$FLASHINFER_VERSION" "flashinfer-cubin==$FLASHINFER_VERSION"
                "nvidia-cudnn-frontend==1.32.0" "apache-tvm-ffi==0.1.15.post2")
CUTE_PINS=("nvidia-cutlass-dsl" "4.8.1" "flash-attn-4" "4.0.0b36")  # name version pairs; [cu13] on CUDA 13

log() { echo "[build.sh] $*" >&2; }

venv_python() { "$VENV/bin/python" "$@"; }

setup_venv() {
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
  local stamp=$VENV/.laminar-pins want
  want=$(printf '%s\n' "${PY_PINS[@]}" "$TORCH_PIN" "$(sha256sum "$ROOT/pyproject.toml")")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  log "installing pinned Python packages"
  # numpy<2: the Triton 2.51 Python backend corrupts BYTES tensors under numpy 2.
  venv_python -m pip install -q "${PY_PINS[@]}"
  # Keep an existing CUDA torch; otherwise pin the CPU build (plain `torch` pulls CUDA wheels).
  if ! venv_python -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    venv_python -m pip install -q "$TORCH_PIN"
  fi
  venv_python -m pip install -q --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
}

# On a machine with CUDA (torch built for it and a GPU visible): the attention libraries, with
# torch and numpy held at their installed versions. FlashInfer's JIT cache of compiled kernels
# comes from FlashInfer's own package index, named by LAMINAR_FLASHINFER_JIT_INDEX where wanted;
# without it FlashInfer compiles what it lacks with nvcc during the engine's start-up profile. A
# failed install leaves our Triton kernels serving, with a warning; CPU machines skip all of this.
setup_attention_libs() {
  local cuda stamp=$VENV/.laminar-attention-pins want extra="" pins=() i
  cuda=$(venv_python -c 'import torch; print(torch.version.cuda if torch.version.cuda and torch.cuda.is_available() else "")' 2>/dev/null) || return 0
  [ -n "$cuda" ] || return 0
  [ "${cuda%%.*}" -ge 13 ] && extra="[cu13]"
  for ((i = 0; i < ${#CUTE_PINS[@]}; i += 2)); do pins+=("${CUTE_PINS[i]}$extra==${CUTE_PINS[i + 1]}"); done
  pins+=("${ATTENTION_PINS[@]}")
  want=$(printf '%s\n' "${pins[@]}" "cuda $cuda" "${LAMINAR_FLASHINFER_JIT_INDEX:-}")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  log "installing attention libraries for CUDA $cuda: ${pins[*]}"
  local held=$VENV/.laminar-held.txt
  venv_python -c 'import numpy, torch; print(f"torch=={torch.__version__}\nnumpy=={numpy.__version__}")' > "$held"
  if ! venv_python -m pip install -q -c "$held" "${pins[@]}"; then
    log "WARNING: attention libraries failed to install; our Triton kernels serve attention"; return 0
  fi
  if [ -n "${LAMINAR_FLASHINFER_JIT_INDEX:-}" ]; then
    venv_python -m pip install -q -c "$held" --extra-index-url "$LAMINAR_FLASHINFER_JIT_INDEX" \
      "flashinfer-jit-cache==$FLASHINFER_VERSION+cu$(echo "$cuda" | tr -d .)" \
      || log "WARNING: no FlashInfer JIT cache for CUDA $cuda; it compiles at the engine's start-up"
  fi
  echo "$want" > "$stamp"
}

# The Python backend puts the model repository on sys.path, where the model directory
# `laminar/` would shadow the package as an empty namespace package: setuptools' editable
# finder runs after the path scan. A path entry holding the real package wins that scan.
setup_package_path() {
  local site
  site=$(venv_python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$ROOT/backend_src" > "$site/laminar-backend-src.pth"
}

# tritonserver from the nvidia-pytriton wheel: binary, Python backend and the stub that matches
# the venv's Python. The stub imports from the first `python3` on PATH, so the wrapper puts the
# venv first; it ignores PYTHONPATH.
setup_tritonserver() {
  local pt pyver pylib dst=$TOOLS/tritonserver
  pt=$(venv_python -c 'import pytriton, os; print(os.path.dirname(pytriton.__file__))')
  # The stub links libpython by soname and would take the system's, whose patch release may not
  # match the venv's standard library (extension modules such as _ssl then fail to load in the
  # model): the venv's own libpython comes first where its Python was built shared.
  pylib=$(venv_python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else "")')
  pyver=$(venv_python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ ! -x "$dst/backends/python/triton_python_backend_stub" ]; then
    log "staging Triton backends (stub for Python $pyver)"
    rm -rf "$dst"; mkdir -p "$dst"
    cp -r "$pt/tritonserver/backends" "$dst/"
    cp "$pt/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub" "$dst/backends/python/"
    chmod +x "$dst/backends/python/triton_python_backend_stub"
  fi
  cat > "$VENV/bin/tritonserver" <<EOF
#!/bin/sh
# Generated by build.sh: Triton 2.51 from nvidia-pytriton with the venv's Python backend stub.
export PATH="$VENV/bin:\$PATH"
export LD_LIBRARY_PATH="${pylib:+$pylib:}$(dirname "$pt")/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$pt/tritonserver/bin/tritonserver" --backend-directory "$dst/backends" "\$@"
EOF
  chmod +x "$VENV/bin/tritonserver"
}

glibc_at_least_2_38() {
  venv_python -c 'import platform, sys; v = platform.libc_ver()[1]; sys.exit(0 if tuple(map(int, v.split("."))) >= (2, 38) else 1)'
}

# "URI SUITE" for every deb entry of the machine's apt sources, one-line (*.list) and deb822
# (*.sources) formats alike.
apt_source_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    if [ -f "$f" ]; then awk '$1 == "deb" { sub(/^deb[ \t]+(\[[^]]*\][ \t]+)?/, ""); print $1, $2 }' "$f"; fi
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    if [ -f "$f" ]; then awk '
      function flush() { if (types ~ /(^| )deb( |$)/) { n = split(uris, u, " "); m = split(suites, s, " ");
                           for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j] }
                         types = uris = suites = "" }
      /^[ \t]*$/ { flush(); next }
      /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
      /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
      END { flush() }' "$f"; fi
  done
}

# The Debian archive the machine itself uses (an entry for a release, e.g. `bookworm`, at a
# `.../debian` path), so no archive host is named here; LAMINAR_DEBIAN_ARCHIVE overrides it.
debian_archive() {
  if [ -n "${LAMINAR_DEBIAN_ARCHIVE:-}" ]; then echo "$LAMINAR_DEBIAN_ARCHIVE"; return; fi
  apt_source_entries | awk '$1 ~ /\/debian\/?$/ && $2 ~ /^[a-z]+$/ { print $1; exit }'
}

# Debian trixie's libc/libstdc++ in a private apt state dir (the host's apt is untouched), run
# through their own loader, so the manylinux_2_38 perf_analyzer runs on an older glibc.
fetch_glibc_shim() {
  local shim=$TOOLS/glibc-shim apt=$TOOLS/apt
  [ -x "$shim/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] && return
  command -v apt-get >/dev/null || { log "perf_analyzer needs glibc >= 2.38 or apt-get for a shim"; exit 1; }
  local archive
  archive=$(debian_archive)
  [ -n "$archive" ] || { log "no Debian archive in /etc/apt: set LAMINAR_DEBIAN_ARCHIVE to one"; exit 1; }
  log "fetching the glibc 2.38+ shim for perf_analyzer from $archive"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/parts" "$apt/prefs" "$apt/debs"
  echo "deb $archive trixie main" > "$apt/sources.list"
  local opts=(-q -o "Dir::State=$apt" -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt"
              -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
              -o "Dir::Etc::Preferences=$apt/prefs" -o "Dir::State::status=/dev/null"
              -o "APT::Sandbox::User=$(id -un)")
  apt-get "${opts[@]}" update >/dev/null
  (cd "$apt/debs" && apt-get "${opts[@]}" download libc6 libstdc++6 libgcc-s1 >/dev/null)
  rm -rf "$shim"; mkdir -p "$shim"
  for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$shim"; done
}

setup_perf_analyzer() {
  local dir=$TOOLS/perf_analyzer bin
  bin=$dir/perf_analyzer/bin/perf_analyzer
  if [ ! -x "$bin" ]; then
    log "fetching $PA_PIN"
    rm -rf "$dir"; mkdir -p "$dir/whl"
    # The wheel is tagged manylinux_2_38; pip refuses it on older hosts, so fetch it explicitly.
    venv_python -m pip download -q --only-binary=:all: --no-deps --platform manylinux_2_38_x86_64 \
      --python-version 3 -d "$dir/whl" "$PA_PIN"
    venv_python -m zipfile -e "$dir"/whl/*.whl "$dir"
    chmod +x "$bin"
  fi
  local run="\"$bin\""
  if ! glibc_at_least_2_38; then
    fetch_glibc_shim
    local lib=$TOOLS/glibc-shim/usr/lib/x86_64-linux-gnu
    run="\"$lib/ld-linux-x86-64.so.2\" --library-path \"$lib\" \"$bin\""
  fi
  printf '#!/bin/sh\n# Generated by build.sh: perf_analyzer %s.\nexec %s "$@"\n' "$PA_PIN" "$run" \
    > "$VENV/bin/perf_analyzer"
  chmod +x "$VENV/bin/perf_analyzer"
}

# An LLM benchmark client in a venv of its own (aiperf and genai-perf need numpy 2, the served
# model numpy < 2), run through a .venv/bin wrapper that puts perf_analyzer on PATH for genai-perf.
setup_bench_tool() {  # PIN EXECUTABLE
  local pin=$1 exe=$2 dir=$TOOLS/$2-venv
  if [ "$(cat "$dir/.laminar-pin" 2>/dev/null)" != "$pin" ]; then
    log "installing $pin"
    rm -rf "$dir"; python3 -m venv "$dir"
    "$dir/bin/python" -m pip install -q "$pin"
    echo "$pin" > "$dir/.laminar-pin"
  fi
  printf '#!/bin/sh\n# Generated by build.sh: %s in its own venv.\nPATH="%s:$PATH" exec "%s" "$@"\n' \
    "$pin" "$VENV/bin" "$dir/bin/$exe" > "$VENV/bin/$exe"
  chmod +x "$VENV/bin/$exe"
}

# demo_model/'s stamp names the recipe (the demo package's code and corpus): a current checkpoint
# is kept, a stale one retrained.
setup_demo_model() {
  (cd "$ROOT" && venv_python -m laminar.demo --out demo_model)
}

setup() {
  setup_venv
  setup_attention_libs
  setup_package_path
  setup_tritonserver
  setup_perf_analyzer
  setup_bench_tool "$AIPERF_PIN" aiperf
  setup_bench_tool "$GENAI_PERF_PIN" genai-perf
  setup_demo_model
}

# The OpenAI API over tritonserver's gRPC port (from ARGS, default 8001). Started before `exec
# tritonserver`, it exits when the server process does (--exit-with-parent).
start_openai_api() {
  local port=${LAMINAR_OPENAI_PORT:-9000} grpc=8001 prev="" arg checkpoint
  [ "$port" = off ] && return
  for arg in "$@"; do
    case $arg in --grpc-port=*) grpc=${arg#*=} ;; esac
    [ "$prev" = --grpc-port ] && grpc=$arg
    prev=$arg
  done
  # A relative LAMINAR_MODEL is relative to the model's directory, as for the engine.
  checkpoint=$(cd "$ROOT/model_repository/laminar" && realpath -m -- "${LAMINAR_MODEL:-../../demo_model}")
  log "OpenAI API at http://localhost:$port/v1 (Triton gRPC localhost:$grpc)"
  "$VENV/bin/python" -m laminar.openai_api --triton-url "localhost:$grpc" --checkpoint "$checkpoint" \
    --port "$port" --exit-with-parent &
}

cmd=${1:-setup}
[ $# -gt 0 ] && shift
case $cmd in
  setup) setup ;;
  serve)
    setup
    start_openai_api "$@"
    # Explicit model control lets the model unload itself (turning it not-ready) if its engine
    # dies; the supervisor restarts tritonserver if a backend stub dies and bounds shutdown.
    # The OpenAI API exits with its parent, which exec makes the supervisor.
    exec "$VENV/bin/python" -m laminar_supervisor -- "$VENV/bin/tritonserver" \
      --model-repository "$ROOT/model_repository" --model-control-mode=explicit --load-model=laminar "$@" ;;
  test)
    setup
    cd "$ROOT"
    "$VENV/bin/ruff" check .
    rc=0; "$VENV/bin/python" -m pytest tests "$@" || rc=$?
    # pytest exits 5 when it collected no tests: nothing failed.
    [ $rc -eq 5 ] && rc=0
    exit $rc ;;
  client) exec "$VENV/bin/python" "$ROOT/perf/client.py" "$@" ;;
  *) echo "usage: $0 [setup|serve|test|client PROMPT]" >&2; exit 2 ;;
esac
