#!/usr/bin/env bash
# Create the peer-server virtualenvs for bench/serve.py (idempotent; re-running only fills in what is missing).
#   bench/.venvs/mlserver : MLServer 1.7.1 (adaptive batching) + onnxruntime, uvloop<0.22 (newer uvloop breaks it)
#   bench/.venvs/pytriton : Triton Inference Server through PyTriton 0.7.0 + onnxruntime, numpy<2 (PyTriton with
#                           numpy 2 answers 200 with empty outputs)
# Usage (from anywhere): bash bench/serve_peers/setup.sh [python]   (python defaults to the interpreter that
# built the repo's .venv, else python3.11, else python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$(cd "$here/.." && pwd)/.venvs"
repo="$(cd "$here/../.." && pwd)"
py="${1:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then
    py="$("$repo/.venv/bin/python" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
  fi
  [[ -x "$py" ]] || py="$(command -v python3.11 || command -v python3)"
fi
mkdir -p "$venvs"

make_venv() {  # name, marker package spec ..., pip args
  local name="$1"; shift
  local dir="$venvs/$name"
  if [[ -f "$dir/.complete" ]] && cmp -s "$dir/.complete" <(printf '%s\n' "$@"); then
    echo "$name: up to date ($dir)"
    return
  fi
  [[ -x "$dir/bin/python" ]] || "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade pip
  "$dir/bin/python" -m pip install --quiet "$@"
  printf '%s\n' "$@" > "$dir/.complete"
  echo "$name: installed ($dir)"
}

make_venv mlserver "mlserver==1.7.1" "uvloop<0.22" "onnxruntime" "numpy<3"
make_venv pytriton "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime"
