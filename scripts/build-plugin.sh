#!/usr/bin/env bash
# Builds the cniplug managed Docker plugin from this checkout, with no registry access needed, and creates it
# in the local dockerd (replacing a plugin of the same name) and enables it.
#
#   scripts/build-plugin.sh [-n NAME] [-o DIR] [--no-create] [--no-enable]
#
#   -n NAME       plugin name (default cniplug)
#   -o DIR        write the plugin bundle (config.json + rootfs/) to DIR and keep it (default: a temp dir)
#   --no-create   only write the bundle (with -o), for `docker plugin create` elsewhere
#   --no-enable   create the plugin but leave it disabled (to `docker plugin set` it first)
#
# The bundle comes from scripts/build-rootfs.sh (static binaries and Debian's iptables, no base image), with a
# release mark unlike any other build's: dockerd 20.10 refuses `docker plugin create` of a rootfs identical to
# an installed plugin's ("content sha256:... already exists"). Releases are built reproducibly by
# scripts/release.sh instead.
# Needs root, docker, Go and apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

name=cniplug out="" create=1 enable=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) name=$2; shift 2;;
    -o) out=$2; shift 2;;
    --no-create) create=0; shift;;
    --no-enable) enable=0; shift;;
    -h|--help) sed -n '2,17p' "$0"; exit 0;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2;;
  esac
done
[ $create = 1 ] || [ -n "$out" ] || { echo "--no-create needs -o DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-plugin.sh must run as root" >&2; exit 1; }

say() { printf '== %s\n' "$*" >&2; }

tmpdir=""
trap '[ -z "$tmpdir" ] || rm -rf "$tmpdir"' EXIT
if [ -z "$out" ]; then
  tmpdir=$(mktemp -d /var/tmp/cniplug-plugin.XXXXXX)
  out=$tmpdir
fi
mark="cniplug $(git describe --always --dirty 2>/dev/null || echo unknown) built $(date -u +%Y-%m-%dT%H:%M:%SZ) ($(od -An -N6 -tx1 /dev/urandom | tr -d ' \n'))"
scripts/build-rootfs.sh -r "$mark" "$out" >/dev/null
say "plugin bundle in $out ($(du -sh "$out" | cut -f1))"
# Staging namespaces reach the host's /run/netns only through a shared mount: make it one, in a peer group of
# its own. `ip netns add` bind-mounts /run/netns onto itself, which puts it in the root mount's peer group when
# / is shared (systemd, or `mount --make-rshared /`): every netns the plugin pins then gets a second mount,
# hidden under /run/netns, and once the plugin's mount namespace is gone (a crash, disable, upgrade) the next
# instance can neither see that namespace nor remove its file ("device or resource busy").
# The containers' namespaces that dockerd pins under /run/docker/netns after the plugin started reach the plugin
# the same way only (direct join, DHCP leases renewed from the container's namespace).
for d in /run/netns /run/docker/netns; do
  mkdir -p "$d"
  mountpoint -q "$d" || mount --bind "$d" "$d"
  mount --make-private "$d" && mount --make-shared "$d"
done

[ $create = 1 ] || exit 0

# The mount sources must exist for the plugin to start (Docker does not create them).
mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/cniplug
if docker plugin inspect "$name" >/dev/null 2>&1; then
  say "replacing plugin $name"
  docker plugin disable -f "$name" >/dev/null 2>&1 || true
  docker plugin rm -f "$name" >/dev/null
fi
docker plugin create "$name" "$out" >/dev/null
if [ $enable = 1 ] && [ -S /run/docker/plugins/cniplug.sock ]; then
  # A host-mode cniplug serves there and holds /var/lib/cniplug, the plugin's default state dir.
  echo "plugin $name created but not enabled: a host-mode cniplug is running (/run/docker/plugins/cniplug.sock)" >&2
  echo "and both would use /var/lib/cniplug. Stop it, or: docker plugin set $name state-dir.source=<dir>;" >&2
  echo "then: docker plugin enable $name" >&2
  exit 1
fi
if [ $enable = 1 ]; then
  docker plugin enable "$name" >/dev/null
fi
docker plugin ls --filter "enabled=$([ $enable = 1 ] && echo true || echo false)" --format '{{.Name}}  enabled={{.Enabled}}  {{.Description}}' | grep "^$name" || true
