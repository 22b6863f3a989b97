#!/usr/bin/env bash
# The README's first command: installs the pinned nats-server, builds the web
# app (with the machine's Node.js and npm, if present) and imctl (release: the
# stack's binary, nothing the tests need), then runs the local stack (`imctl
# up`) until Ctrl-C. Extra arguments go to `imctl up`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh stack
if ! bash scripts/clients.sh build; then
  echo "up: the web app was not built (it needs Node.js 20.19+ with npm); the API and WebSocket work without it" >&2
fi
echo "up: building imctl (release; the first build takes a few minutes)" >&2
cargo build --release --locked -p im-ops --bin imctl
exec "$root/target/release/imctl" up "$@"
