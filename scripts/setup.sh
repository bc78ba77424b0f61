#!/usr/bin/env bash
# One-time set-up: Debian text packages (corpus sources), chromium (browser tests), a C compiler
# (the SAE trainer's native CPU kernels, compiled on first use; without it a slower path runs),
# a virtual environment in .venv with a CPU build of torch where there is no NVIDIA GPU,
# and the project with its dev and bench extras. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
debs=(fortunes fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-ru fortunes-cs fortunes-br
      "installation-guide-${arch}" chromium gcc libc6-dev)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    bash -c "$cmd"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo bash -c "$cmd"
  else
    echo "setup: these Debian packages are missing and I cannot install them without root." >&2
    echo "setup: run this, then run make again:" >&2
    echo "    sudo bash -c '$cmd'" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip

if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the CUDA build of torch"
    "$VENV/bin/python" -m pip install "torch>=2.3"
  else
    echo "setup: no NVIDIA GPU: installing the CPU build of torch 2.13.0"
    "$VENV/bin/python" -m pip install "torch==2.13.0"
  fi
fi
# the bench extra (EleutherAI sparsify, for `bench sae-train --vs sparsify` and its test) is
# small; where it cannot be installed (no index reachable) the rest still is, and its test skips
if ! "$VENV/bin/python" -m pip install -q -e ".[dev,bench]"; then
  echo "setup: could not install the bench extra (eai-sparsify); installing without it:" \
       "tests/test_bench_sparsify.py will be skipped" >&2
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
