#!/usr/bin/env bash
# Sourced by scripts/test and scripts/demo: makes .venv with everything the project needs.
# Idempotent: a stamp of pyproject.toml skips the pip step when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COMPOFA_VENV:-$ROOT/.venv}"
EXTRAS="${COMPOFA_EXTRAS:-dev,tflite,android,gpu}"

# System packages the tests use: the adb client (to prove the test ADB daemon faithful) and
# Fashion-MNIST (training tests, demo). Only attempted as root; tests skip without them.
need_apt=()
command -v adb >/dev/null 2>&1 || need_apt+=(adb)
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
if ((${#need_apt[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: apt-get install ${need_apt[*]}"
  (apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1; }) ||
    echo "bootstrap: could not install ${need_apt[*]}; the tests that need them will skip"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.compofa-stamp-${EXTRAS//,/-}"
want="$(sha256sum < "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing compofa-bench[$EXTRAS] (first run downloads torch: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import compofa_bench, torch, torchvision, onnxruntime" ||
    { echo "bootstrap: installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
