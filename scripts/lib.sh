# Shared by the scripts: paths, logging, tool checks. Source it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${STATE_DIR:-$ROOT/.postback}"
TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

tansu_bin() {
  if [[ -n "${TANSU_BIN:-}" ]]; then echo "$TANSU_BIN"; return; fi
  if [[ -x "$HOME/.cargo/bin/tansu" ]]; then echo "$HOME/.cargo/bin/tansu"; return; fi
  command -v tansu || true
}

venv_python() { echo "$STATE/venv/bin/python"; }
