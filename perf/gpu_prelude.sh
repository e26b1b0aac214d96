# Sourced first by every perf/gpu_*_session.sh (run from the checkout's root on the device
# machine, where python3 has torch and Triton but not this package): what each device call needs.
#   - this checkout importable: backend_src on PYTHONPATH, kernels/ as laminar_kernels through a
#     /tmp/pkg symlink; `laminar_pth` also writes both into python3's site-packages, for the
#     Python backend stub of a tritonserver, which ignores PYTHONPATH;
#   - unbuffered Python output, pipefail (a step's failure survives `| tee`), and $OUT (default
#     /tmp/out: the folder the device call brings back) created;
#   - `gpu_info`: the GPU (or "no GPU") at the top of the log, so every figure names its card.
set -o pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/pkg && ln -sfn "$PWD/kernels" /tmp/pkg/laminar_kernels
export PYTHONPATH="$PWD/backend_src:/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"

gpu_info() {
  nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.sm,clocks.mem --format=csv 2>/dev/null || echo "no GPU"
}

laminar_pth() {
  local site
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n%s\n' "$PWD/backend_src" /tmp/pkg > "$site/laminar-backend-src.pth"
}
