#!/usr/bin/env bash
# The README's first command: installs the pinned tools, then runs the local
# stack (`imctl up`) until Ctrl-C. Extra arguments go to `imctl up`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec cargo run --locked -p im-ops --bin imctl -- up "$@"
