#!/usr/bin/env bash
# The README's second command: installs the pinned tools, then runs every
# test of the workspace (each test starts its own nats-server processes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo test --locked --workspace -- --nocapture "$@"
