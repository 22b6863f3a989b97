#!/usr/bin/env bash
# The clients (clients/: the TypeScript SDK, the web app, the browser tests)
# with the machine's Node.js and npm:
#
#   scripts/clients.sh install   npm ci, again only when the lockfile changed
#   scripts/clients.sh build     install, then build the web app (clients/web/dist)
#   scripts/clients.sh test      install, build, then the SDK's unit tests and its
#                                integration tests against a real stack (imctl up;
#                                IM_IMCTL names the binary, default target/debug/imctl),
#                                then the web app in headless Chromium (IM_CHROMIUM,
#                                default /usr/bin/chromium; screenshots in target/e2e/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/clients"
what="${1:-test}"

need_node() {
  command -v node >/dev/null && command -v npm >/dev/null || {
    echo "clients: Node.js 20.19+ with npm is needed for the clients" >&2
    return 1
  }
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' || {
    echo "clients: Node.js $(node --version) is too old: 20.19 or newer" >&2
    return 1
  }
}

install() {
  need_node
  local stamp=node_modules/.im-lock
  local want
  want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "clients: npm ci" >&2
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
  fi
}

# The browser tests' Chromium: the system's (IM_CHROMIUM, default
# /usr/bin/chromium), installed from Debian's package when missing and root.
need_chromium() {
  local chromium="${IM_CHROMIUM:-/usr/bin/chromium}"
  if [ ! -x "$chromium" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "clients: installing Debian's chromium for the browser tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  fi
  [ -x "$chromium" ] || {
    echo "clients: no Chromium at $chromium: install Debian's chromium package, or set IM_CHROMIUM" >&2
    return 1
  }
  echo "clients: $("$chromium" --version 2>/dev/null | head -1)" >&2
}

build() {
  install
  npm run --silent build -w @im/web
}

case "$what" in
  install) install ;;
  build) build ;;
  test)
    build
    NO_COLOR=1 npm test --silent -w @im/sdk
    NO_COLOR=1 npm run --silent test:integration -w @im/sdk
    need_chromium
    NO_COLOR=1 npm test --silent -w @im/e2e
    ;;
  *) echo "usage: scripts/clients.sh install|build|test" >&2; exit 2 ;;
esac
