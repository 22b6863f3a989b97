#!/usr/bin/env bash
# The README's first command: installs the pinned nats-server, builds the web
# app (with the machine's Node.js and npm, if present) and imctl with
# im-gateway (release: the stack's binaries, nothing the tests need), then
# runs the local stack (`imctl up`) until Ctrl-C. Extra arguments go to
# `imctl up`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh stack
if ! bash scripts/clients.sh build; then
  echo "up: the web app was not built (it needs Node.js 20.19+ with npm); the API and WebSocket work without it" >&2
fi
echo "up: building imctl (release; the first build takes a few minutes)" >&2
# And im-gateway beside it, for the second gateway imctl up prints how to
# start: one link more (it shares every crate with imctl), and never a
# stale binary from an older checkout (found in a user trial).
cargo build --release --locked -p im-ops --bin imctl -p im-gateway --bin im-gateway
exec "$root/target/release/imctl" up "$@"
