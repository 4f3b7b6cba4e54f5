#!/usr/bin/env bash
# Creates the workspaces' own Python environment (default .venv-workspace): what researcher code
# runs on inside the sandbox. It is built on Debian's /usr/bin/python3.11, not on the hub's
# Python: the sandbox binds /usr read-only and nothing under /root, so only a venv whose `home`
# is /usr/bin starts in there, and it must be readable by every per-workspace user.
#
#     scripts/workspace-env.sh [ENV_DIR]
#
# Idempotent: stamps record what was installed, so a second run with nothing changed is a no-op.
# SPE itself goes in as a regular copy (not editable: the sandbox cannot see the source tree)
# without its server dependencies; only what `spe.analysis`, `spe.sdc` and `spe.config` import.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
ENV_DIR="${1:-.venv-workspace}"
PYTHON=/usr/bin/python3.11

# Major versions pinned: a workspace must not drift into an API the notebooks or SPE's analysis
# code were not written for. The majors follow SPE's main environment (pandas 3, numpy 2, ...).
PACKAGES=(
    "jupyter_server>=2,<3"
    # jupyterhub.singleuser: the hub's spawner starts the server through it (same major as the hub).
    "jupyterhub>=6.1,<7"
    "jupyterlab>=4,<5"
    "ipykernel>=7,<8"
    "pandas>=3,<4"
    "numpy>=2,<3"
    "pyarrow>=26,<27"
    "scipy>=1.11,<2"
    "statsmodels>=0.15,<0.16"
    "pyyaml>=6,<7"
    "pydantic>=2.6,<3"
    "pydantic-settings>=2.2,<3"
    "click>=8.1,<9"
    # The plan evaluator (spe.analysis.plan): previews run the same DuckDB code as the server.
    "duckdb>=2,<3"
)
DEPS_STAMP="$ENV_DIR/.spe-workspace-deps"
SPE_STAMP="$ENV_DIR/.spe-workspace-spe"

if [[ ! -x "$PYTHON" ]]; then
    echo "$PYTHON is missing; the workspace environment is built on Debian's python3.11:" >&2
    echo "    apt-get install -y python3.11 python3-venv" >&2
    exit 1
fi

# What is wanted, as text: the pins and the interpreter. A change reinstalls the dependencies.
# Removed after the install: rfc3987-syntax, which jsonschema imports when present (optionally)
# and which builds a grammar at import, 1 to 2 s of every workspace server's start, for an IRI
# format no schema here uses (docker/Dockerfile.workspace removes it too).
UNWANTED=(rfc3987-syntax)
deps_wanted="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') ${PACKAGES[*]} -${UNWANTED[*]}"
# SPE's own sources: a change reinstalls only SPE (seconds, not minutes).
spe_wanted="$(
    find pyproject.toml spe -type f \( -name '*.py' -o -name '*.toml' -o -name '*.ini' \
        -o -name '*.mako' -o -name '*.md' -o -name '*.html' -o -name '*.css' -o -name '*.js' \) \
        -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum
)"

if [[ -x "$ENV_DIR/bin/python" && -f "$DEPS_STAMP" && "$(<"$DEPS_STAMP")" == "$deps_wanted" &&
    -f "$SPE_STAMP" && "$(<"$SPE_STAMP")" == "$spe_wanted" ]]; then
    echo "==> $ENV_DIR is up to date"
    exit 0
fi

make_venv() {
    "$PYTHON" -m venv "$ENV_DIR" >/dev/null 2>&1
}

if [[ ! -x "$ENV_DIR/bin/python" ]] || ! "$ENV_DIR/bin/python" -c 'import sys' 2>/dev/null; then
    echo "==> creating $ENV_DIR with $PYTHON"
    rm -rf "$ENV_DIR"
    if ! make_venv; then
        rm -rf "$ENV_DIR"
        # Debian splits venv/ensurepip out of the interpreter package.
        if [[ "$(id -u)" != 0 ]]; then
            echo "$PYTHON cannot create a virtualenv: Debian's venv module is missing. Run:" >&2
            echo "    sudo apt-get install -y python3-venv" >&2
            echo "then run $0 again." >&2
            exit 1
        fi
        echo "==> installing Debian's python3-venv (apt-get install -y python3-venv)"
        apt-get install -y python3-venv >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y python3-venv >/dev/null; }
        make_venv || {
            echo "$PYTHON still cannot create $ENV_DIR; see: $PYTHON -m venv $ENV_DIR" >&2
            exit 1
        }
    fi
fi

pip_install() {
    # pip's own errors still show; only its notes about unusable local index folders are dropped.
    "$ENV_DIR/bin/python" -m pip install -q --no-cache-dir "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [[ ! -f "$DEPS_STAMP" || "$(<"$DEPS_STAMP")" != "$deps_wanted" ]]; then
    rm -f "$DEPS_STAMP" "$SPE_STAMP"
    echo "==> installing the workspace packages into $ENV_DIR (a few minutes the first time)"
    pip_install "${PACKAGES[@]}"
    "$ENV_DIR/bin/python" -m pip uninstall -q -y "${UNWANTED[@]}"
    echo "$deps_wanted" >"$DEPS_STAMP"
fi

if [[ ! -f "$SPE_STAMP" || "$(<"$SPE_STAMP")" != "$spe_wanted" ]]; then
    rm -f "$SPE_STAMP"
    echo "==> installing SPE (a copy, without its server dependencies) into $ENV_DIR"
    # Built from a copy of the sources: an in-tree build would leave build/ in the work tree.
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/spe" "$src/"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    pip_install --no-deps --force-reinstall "$src"
    echo "$spe_wanted" >"$SPE_STAMP"
fi

echo "==> checking that researcher code can import what it needs"
imports="spe.analysis, spe.sdc, pandas, pyarrow, duckdb, statsmodels.api, ipykernel, jupyter_server"
"$ENV_DIR/bin/python" -c "import $imports, jupyterhub.singleuser" || {
    echo "The workspace environment $ENV_DIR is incomplete (the import error is above);" \
        "fix the cause and run $0 again: it reinstalls." >&2
    rm -f "$DEPS_STAMP" "$SPE_STAMP"
    exit 1
}

# Every per-workspace user must read and run it; nobody but root may change it.
chmod -R a+rX,go-w "$ENV_DIR"
echo "==> $ENV_DIR is ready ($(du -sh "$ENV_DIR" | cut -f1))"
