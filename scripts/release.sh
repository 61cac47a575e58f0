#!/usr/bin/env bash
# Builds the managed plugin for each architecture and pushes it to a registry, one tag per architecture:
#
#   scripts/release.sh VERSION REGISTRY [ARCH...]        (make release VERSION=V REGISTRY=R)
#
# pushes REGISTRY/cniplug:VERSION-amd64 and REGISTRY/cniplug:VERSION-arm64 (or the ARCHes given). A managed
# plugin cannot be installed from a multi-architecture manifest list (`docker plugin install` pulls one plugin
# config and one rootfs, with no platform), so each architecture has a tag of its own: users install the one
# of their machine, e.g. `docker plugin install REGISTRY/cniplug:VERSION-arm64`.
#
# The bundles are built by scripts/build-rootfs.sh, reproducibly: SOURCE_DATE_EPOCH is the commit's time, so
# two releases of one commit push the same rootfs. With OUT=DIR in the environment the bundles are kept in
# DIR/<arch>. Prints one line per tag: the reference, then the rootfs digest and size.
# Needs root, docker (logged in to REGISTRY if it asks), Go and apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 VERSION REGISTRY [ARCH...]" >&2; exit 2; }
version=$1 registry=${2%/}
shift 2
arches=${*:-amd64 arm64}
# A tag is at most 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'; the arch suffix takes 6.
[[ "$version" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,121}$ ]] ||
  { echo "invalid VERSION '$version': letters, digits, '_', '.' and '-', at most 122, not starting with '.' or '-'" >&2; exit 2; }
[ -n "$registry" ] || { echo "REGISTRY is empty" >&2; exit 2; }

keep=${OUT:-}
for arch in $arches; do
  if [ -n "$keep" ]; then
    dir=$keep/$arch
  else
    dir=$(mktemp -d /var/tmp/cniplug-release.XXXXXX)
  fi
  digest=$(scripts/build-rootfs.sh -a "$arch" -r "cniplug $version ($arch)" "$dir" | tail -1)
  ref=$registry/cniplug:$version-$arch
  docker plugin rm -f "$ref" >/dev/null 2>&1 || true
  docker plugin create "$ref" "$dir" >/dev/null
  if ! docker plugin push "$ref" >&2; then
    docker plugin rm -f "$ref" >/dev/null 2>&1 || true
    echo "pushing $ref failed" >&2
    exit 1
  fi
  docker plugin rm -f "$ref" >/dev/null
  [ -n "$keep" ] || rm -rf "$dir"
  echo "$ref ${digest#rootfs }"
done
