#!/usr/bin/env bash
# Builds today's Docker Compose (github.com/docker/compose/v5, from the Go module proxy) as the docker CLI
# plugin `docker compose`, cached by version so a second run does not rebuild:
#   /var/cache/cniplug/compose/<version>/docker-compose
# and installs it as /usr/local/lib/docker/cli-plugins/docker-compose. Prints the cached binary's path on its
# last line. COMPOSE_VERSION overrides the version.
set -euo pipefail
COMPOSE_VERSION=${COMPOSE_VERSION:-v5.6.0}
CACHE=${CNIPLUG_COMPOSE_CACHE:-/var/cache/cniplug/compose}
bin="$CACHE/$COMPOSE_VERSION/docker-compose"

if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { echo "install-compose.sh: Go is required to build Compose" >&2; exit 1; }
  echo "building Docker Compose $COMPOSE_VERSION into $bin (about a minute on 2 cores)" >&2
  work=$(mktemp -d /var/tmp/cniplug-compose.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  # A module of its own: Compose's dependencies stay out of cniplug's go.mod.
  (cd "$work" && go mod init cniplug.local/compose-build >/dev/null 2>&1 &&
    go get "github.com/docker/compose/v5/cmd@$COMPOSE_VERSION" >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
      -o "$work/docker-compose" github.com/docker/compose/v5/cmd >&2)
  mkdir -p "$(dirname "$bin")"
  mv "$work/docker-compose" "$bin"
fi
install -D -m 0755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
echo "$bin"
