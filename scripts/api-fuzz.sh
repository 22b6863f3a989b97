#!/usr/bin/env bash
# The HTTP API against its spec, by an independent fuzzer: schemathesis
# (pinned, from PyPI, in a venv under target/) generates requests for every
# operation in docs/openapi.yaml (served by the gateway at /v1/openapi.json)
# and sends them to a live `imctl up`, as a signed-in user. It fails on any
# 5xx and on any answer whose status, content type, headers or body the
# spec does not allow. Needs target/debug/imctl (scripts/test.sh builds it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SCHEMATHESIS_VERSION=4.32.5
# Examples per operation and phase: enough to reach every status an
# operation documents, few enough to keep the run under a minute. One
# worker: hypothesis describes its strategies with the ast module, which
# is not thread-safe on Python 3.11 (two workers failed a run that way).
MAX_EXAMPLES="${IM_FUZZ_EXAMPLES:-40}"
venv="$root/target/api-fuzz-venv"
if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null || true)" != *"$SCHEMATHESIS_VERSION"* ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
imctl="$root/target/debug/imctl"
data="$(mktemp -d)"
nats_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$imctl" up --data-dir "$data" --nats-port "$nats_port" --gateway-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$data/up.log" 2>&1 &
up=$!
cleanup() { kill "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
base=""
for _ in $(seq 600); do
  base="$(grep -o 'imctl: gateway http://[0-9.:]*' "$data/up.log" | head -1 | sed 's/imctl: gateway //' || true)"
  if [[ -n "$base" ]] && curl -fs "$base/readyz" >/dev/null; then break; fi
  kill -0 "$up" 2>/dev/null || { cat "$data/up.log"; exit 1; }
  sleep 0.1
done
curl -fs "$base/readyz" >/dev/null || { echo "api-fuzz: the stack never became ready"; cat "$data/up.log"; exit 1; }
token="$("$imctl" token issue --user fuzz --data-dir "$data")"
echo "api-fuzz: schemathesis $SCHEMATHESIS_VERSION against $base"
status=0
"$venv/bin/schemathesis" run "$base/v1/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --seed 1 \
  --no-color || status=$?
if [[ $status -ne 0 ]]; then
  echo "api-fuzz: the stack's log:"
  tail -n 50 "$data/up.log"
  echo "api-fuzz: 0 passed, 1 failed"
else
  echo "api-fuzz: 1 passed, 0 failed"
fi
exit "$status"
