#!/usr/bin/env bash
# The README's second command: installs the pinned tools, then runs every
# test of the workspace (each test starts its own nats-server processes) and
# the clients' tests (scripts/clients.sh), and ends with one total line: "tests: N passed, N failed".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace --no-fail-fast -- --nocapture "$@" 2>&1 | tee "$log" || status=$?
# The clients' tests (SDK unit and integration against the imctl just built),
# then the HTTP API against docs/openapi.yaml by schemathesis.
if cargo build --locked -p im-ops --bin imctl; then
  bash scripts/clients.sh test 2>&1 | tee -a "$log" || status=$?
  bash scripts/api-fuzz.sh 2>&1 | tee -a "$log" || status=$?
else
  status=1
fi
awk '{ gsub(/\033\[[0-9;]*m/, "") } /^test result:/ || /^api-fuzz: [0-9]+ passed/ || /^ *Tests +[0-9]+ (passed|failed)/ || /^ +[0-9]+ (passed|failed)( |$)/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
