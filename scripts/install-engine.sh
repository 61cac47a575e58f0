#!/usr/bin/env bash
# Builds today's Docker Engine (dockerd, docker-proxy, containerd, its runc shim, runc) from the Go module proxy
# into a directory cached by version, so a second run does not rebuild:
#   /var/cache/cniplug/engine/<dockerd version>/bin
# Prints that bin directory on its last line. Versions can be overridden from the environment.
# Debian's containerd (1.6.20) is below the current engine's minimum and Debian's runc (1.1.5) fails every
# container on it ("namespace {"time" ""} does not exist"), so all five come from the module proxy.
set -euo pipefail
DOCKERD_VERSION=${DOCKERD_VERSION:-v2.0.0-beta.24}      # moby v2 module: the 29.x line, API 1.56
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.3.5}
RUNC_VERSION=${RUNC_VERSION:-v1.5.2}
CACHE=${CNIPLUG_ENGINE_CACHE:-/var/cache/cniplug/engine}
dir="$CACHE/v2-dockerd-$DOCKERD_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION"
bin="$dir/bin"

if [ -x "$bin/dockerd" ] && [ -x "$bin/docker-proxy" ] && [ -x "$bin/containerd" ] \
  && [ -x "$bin/containerd-shim-runc-v2" ] && [ -x "$bin/runc" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "install-engine.sh: Go is required to build the engine" >&2; exit 1; }
need=()
for p in libseccomp-dev pkg-config gcc; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$tmp/bin"
echo "building the Docker engine $DOCKERD_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION into $bin (about 15 minutes on 2 cores)" >&2
# runc and the shim first: they are quick, and a failure shows before the long dockerd build.
CGO_ENABLED=1 GOBIN="$tmp/bin" go install -tags seccomp "github.com/opencontainers/runc@$RUNC_VERSION" >&2
CGO_ENABLED=0 GOBIN="$tmp/bin" go install \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" >&2
# Stamp the version `docker version` shows (a plain go install says "library-import").
CGO_ENABLED=0 GOBIN="$tmp/bin" go install \
  -ldflags "-X github.com/moby/moby/v2/dockerversion.Version=moby-$DOCKERD_VERSION -X github.com/moby/moby/v2/dockerversion.GitCommit=$DOCKERD_VERSION" \
  "github.com/moby/moby/v2/cmd/dockerd@$DOCKERD_VERSION" \
  "github.com/moby/moby/v2/cmd/docker-proxy@$DOCKERD_VERSION" >&2
rm -rf "$dir"
mv "$tmp" "$dir"
echo "$bin"
