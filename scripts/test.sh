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
# Runs a command with its output appended to the log and shown as it comes.
# Not `| tee`: a process a test leaves behind keeps a pipe open and the run
# would wait for it forever; `tail --pid` ends with the command itself.
logged() {
  local from=$(($(stat -c %s "$log") + 1))
  "$@" >>"$log" 2>&1 &
  local pid=$!
  tail -c "+$from" -f --pid="$pid" "$log" &
  local shown=$!
  local rc=0
  wait "$pid" || rc=$?
  wait "$shown" || true
  return "$rc"
}
logged cargo test --locked --workspace --no-fail-fast -- --nocapture "$@" || status=$?
# The clients' tests (SDK unit and integration against the imctl just built),
# then the HTTP API against docs/openapi.yaml by schemathesis.
if cargo build --locked -p im-ops --bin imctl; then
  logged bash scripts/clients.sh test || status=$?
  logged bash scripts/api-fuzz.sh || status=$?
else
  status=1
fi
awk '{ gsub(/\033\[[0-9;]*m/, "") } /^test result:/ || /^api-fuzz: [0-9]+ passed/ || /^ *Tests +[0-9]+ (passed|failed)/ || /^ +[0-9]+ (passed|failed)( |$)/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
