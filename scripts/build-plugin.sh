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
# Base image (env BASE): debian:bookworm-slim when it is present or can be pulled; otherwise a local
# Debian base, cniplug-base:bookworm, made once with debootstrap (minbase + iptables, from DEBIAN_MIRROR)
# and `docker import`, which is kept for the next build.
# Needs root, docker, make and Go; debootstrap only when no base image can be had.
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
local_base=cniplug-base:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# choose_base prints a base image that exists locally, making one if needed.
choose_base() {
  if [ -n "${BASE:-}" ]; then
    docker image inspect "$BASE" >/dev/null 2>&1 || docker pull -q "$BASE" >&2
    echo "$BASE"; return
  fi
  for img in debian:bookworm-slim "$local_base"; do
    docker image inspect "$img" >/dev/null 2>&1 && { echo "$img"; return; }
  done
  if timeout 120 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    echo debian:bookworm-slim; return
  fi
  say "debian:bookworm-slim cannot be pulled: making $local_base with debootstrap from $mirror"
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  local root
  root=$(mktemp -d /var/tmp/cniplug-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  debootstrap --variant=minbase --include=iptables bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$local_base" >/dev/null
  echo "$local_base"
}

say "building cniplug and the reference CNI plugins"
make -s build cni-plugins >&2

base=$(choose_base)
say "building the plugin rootfs on $base"
image=cniplug-plugin-rootfs:build-$$
buildlog=$(mktemp)
if ! docker build --build-arg BASE="$base" -t "$image" . >"$buildlog" 2>&1; then
  tail -30 "$buildlog" >&2; rm -f "$buildlog"; exit 1
fi
rm -f "$buildlog"
cleanup() {
  docker rm -f "cniplug-plugin-export-$$" >/dev/null 2>&1 || true
  docker rmi -f "$image" >/dev/null 2>&1 || true
  [ -z "${tmpdir:-}" ] || rm -rf "$tmpdir"
}
trap cleanup EXIT

if [ -z "$out" ]; then
  tmpdir=$(mktemp -d /var/tmp/cniplug-plugin.XXXXXX)
  out=$tmpdir
fi
rm -rf "$out/rootfs"
mkdir -p "$out/rootfs"
docker create --name "cniplug-plugin-export-$$" "$image" >/dev/null
docker export "cniplug-plugin-export-$$" | tar -C "$out/rootfs" -x
cp config.json "$out/config.json"
# What was built, and a rootfs unlike any other build's: dockerd 20.10 refuses `docker plugin create` of a
# rootfs identical to an installed plugin's ("content sha256:... already exists").
printf 'cniplug %s built %s (%s)\n' "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')" >"$out/rootfs/etc/cniplug-release"
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
