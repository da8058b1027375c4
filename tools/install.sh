#!/usr/bin/env bash
# Installs the workspace from uv.lock into .venv.
#
#   tools/install.sh run   the product only (what `make run` needs)
#   tools/install.sh dev   the product plus the test, lint and benchmark tools
#
# The first install compiles llama.cpp (the local model's runtime) from source; it says so up
# front and shows the compiler's progress. Later installs reuse uv's cached build.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-uv}
case "${1:-}" in
  # --inexact: a `make run` after `make test` keeps the test tools instead of removing them.
  run) args=(--no-dev --inexact) ;;
  dev) args=(--group dev) ;;
  *) echo "usage: $0 run|dev" >&2; exit 2 ;;
esac

# How llama.cpp is compiled (a portable CPU level, without its multimodal tools) is set in
# pyproject.toml's [tool.uv.extra-build-variables], so that uv's cache tells the builds apart.
# llama.cpp compiles on every core.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}

if [ -x .venv/bin/python ] && .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  exec "$uv" sync --frozen --all-packages "${args[@]}"
fi

echo "==> installing dependencies from uv.lock"
echo "    The first install compiles llama.cpp from source for the local model: about 3 minutes"
echo "    on 2 cores, longer on a busy machine. Later installs take seconds."
# uv shows a build's own output only when verbose, as DEBUG lines: keep uv's normal lines and
# the compiler's progress (ninja's "[12/150]" or make's "[  8%]"), in steps of 5 %, and drop
# the rest of the debug chatter.
"$uv" sync --frozen --all-packages "${args[@]}" -v 2>&1 | awk '
  /^DEBUG \[[0-9]+\/[0-9]+\]/ || /^DEBUG \[ *[0-9]+%\]/ {
    if (match($0, /[0-9]+\/[0-9]+/)) {
      split(substr($0, RSTART, RLENGTH), step, "/"); pct = int(100 * step[1] / step[2])
    } else {
      match($0, /[0-9]+%/); pct = int(substr($0, RSTART, RLENGTH - 1))
    }
    pct = pct - pct % 5
    if (pct != last) { printf "    compiling llama.cpp: %d%%\n", pct; fflush(); last = pct }
    next
  }
  /^DEBUG / { next }
  { print; fflush() }
'
