#!/usr/bin/env bash
# A cluster of Docker hosts on this one machine, for multi-host tests and benchmarks. Each node has its own
# network namespace (one address on a flat layer-2 underlay this script makes), its own mount namespace with
# its own /run, /var/lib/docker, /etc/docker, /var/lib/cni, /etc/cni/net.d and /var/lib/cniplug (directories
# under $CNIPLUG_CLUSTER_DIR), its own host name, dockerd (with its own containerd) and cniplug. Binaries
# (/opt/cni/bin, iptables, ip, the engine) are the host's.
#
#   scripts/cluster.sh up [N] [--managed] [--engine current|20.10]   N nodes node1..nodeN (default 3); cniplug
#                                          as a host plugin, or the managed plugin cniplug:latest with --managed
#   scripts/cluster.sh exec NODE CMD...    run CMD on NODE (its docker CLI talks to NODE's dockerd)
#   scripts/cluster.sh ip NODE             NODE's underlay address
#   scripts/cluster.sh socket NODE         NODE's Docker API socket, as seen from the host (for DOCKER_HOST)
#   scripts/cluster.sh stop NODE           shut NODE down cleanly (dockerd stops its containers first)
#   scripts/cluster.sh kill NODE           power NODE off: SIGKILL every process of NODE, containers included
#   scripts/cluster.sh start NODE          boot NODE again: disks kept; /run, links, routes and rules fresh
#   scripts/cluster.sh isolate NODE        cut NODE off the underlay (its cable, not its link, goes down)
#   scripts/cluster.sh rejoin NODE         reconnect it
#   scripts/cluster.sh nodes               the nodes, one per line
#   scripts/cluster.sh down                remove everything `up` made, then check that nothing is left
#
# Nodes are namespaces rather than dockerd-in-a-container (kind, k3d, moby's integration tests): no image to
# build offline, the current engine runs from the host's build cache, and a node's kill and reboot are exact
# (every process, then the network namespace with all its links, routes and rules). See the README.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# Two clusters can run side by side with another CNIPLUG_CLUSTER_NAME and CNIPLUG_CLUSTER_SUBNET.
PREFIX=${CNIPLUG_CLUSTER_NAME:-cniplug-cl}     # netns $PREFIX-ul (the underlay) and $PREFIX-nodeN; cgroup /$PREFIX-nodeN
CL=${CNIPLUG_CLUSTER_DIR:-/var/lib/$PREFIX}    # the nodes' disks, logs and the cluster's settings
SUBNET=${CNIPLUG_CLUSTER_SUBNET:-10.250.0}     # node N is $SUBNET.(10+N)/24
UL_BRIDGE=ulbr

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || die "must run as root"

node_index() {
  [[ "${1:-}" =~ ^node([0-9]+)$ ]] || die "no such node '${1:-}': nodes are named node1..nodeN"
  local i=${BASH_REMATCH[1]}
  [ -f "$CL/cluster.env" ] || die "no cluster is up (scripts/cluster.sh up)"
  # shellcheck disable=SC1091
  . "$CL/cluster.env"
  [ "$i" -ge 1 ] && [ "$i" -le "$NODES" ] || die "no such node '$1': the cluster has node1..node$NODES"
  echo "$i"
}
node_dir() { echo "$CL/node$1"; }
node_ns() { echo "$PREFIX-node$1"; }
anchor_pid() {
  local f
  f="$(node_dir "$1")/anchor.pid"
  [ -f "$f" ] || return 1
  local pid
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] || return 1
  echo "$pid"
}
in_node() { # in_node I CMD...
  local pid
  pid=$(anchor_pid "$1") || die "node$1 is not running (scripts/cluster.sh start node$1)"
  shift
  nsenter -t "$pid" -m -n -u -- "$@"
}

# node_pids I: every process of node I: those in its mount or network namespace (dockerd, containerd,
# shims, cniplug, the managed plugin, host-network containers) and those in its containers' cgroups.
node_pids() {
  local i=$1 d mnt="" net=""
  d=$(node_dir "$i")
  local pid
  if pid=$(anchor_pid "$i"); then mnt=$(readlink "/proc/$pid/ns/mnt" || true); fi
  [ -e "/run/netns/$(node_ns "$i")" ] && net=$(stat -L -c %i "/run/netns/$(node_ns "$i")" 2>/dev/null || true)
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] && continue
    if [ -n "$mnt" ] && [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$mnt" ]; then echo "$p"; continue; fi
    if [ -n "$net" ] && [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "net:[$net]" ]; then echo "$p"; continue; fi
    if grep -q ":/$PREFIX-node$i/" "/proc/$p/cgroup" 2>/dev/null; then echo "$p"; fi
  done
}

kill_node_pids() { # kill_node_pids I: SIGKILL until none is left
  local i=$1 pids
  for _ in $(seq 50); do
    pids=$(node_pids "$i")
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  die "node$i: processes survived SIGKILL: $(node_pids "$i" | tr '\n' ' ')"
}

underlay_up() {
  local ul=$PREFIX-ul
  ip netns add "$ul"
  ip -n "$ul" link set lo up
  ip -n "$ul" link add "$UL_BRIDGE" type bridge
  ip -n "$ul" link set "$UL_BRIDGE" up
}

node_net_up() { # the node's namespace and its cable into the underlay bridge
  local i=$1 ns ul=$PREFIX-ul
  ns=$(node_ns "$i")
  ip netns del "$ns" 2>/dev/null || true
  ip -n "$ul" link del "node$i" 2>/dev/null || true
  ip netns add "$ns"
  ip -n "$ul" link add "node$i" type veth peer name eth0 netns "$ns"
  # A fixed MAC per node: the underlay keeps its neighbour entries valid across a node's reboot.
  ip -n "$ns" link set eth0 address "$(printf '02:50:00:00:00:%02x' "$i")"
  ip -n "$ul" link set "node$i" master "$UL_BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
  # A new netns copies IPv4 forwarding from this host's; a fresh host has it off, and dockerd, which turns it
  # on, then sets the FORWARD policy to DROP. Be that host.
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
}

node_boot() { # start node I's namespaces, cniplug (host mode) and dockerd
  local i=$1 d ns
  d=$(node_dir "$i")
  ns=$(node_ns "$i")
  # shellcheck disable=SC1091
  . "$CL/cluster.env"
  node_net_up "$i"
  rm -rf "$d/run" "$d/anchor.pid"
  mkdir -p "$d"/{run,docker,etc-docker,cni,net.d,cniplug} "$d/cg"
  mkdir -p /var/lib/docker /etc/docker /var/lib/cni /etc/cni/net.d /var/lib/cniplug
  # The node's init: a mount namespace that sees the host's mounts (slave) and shares its own among its
  # processes (as systemd's shared root does; the managed plugin needs dockerd's netns mounts), a sysfs of
  # the node's network namespace with the host's cgroup hierarchies, and the node's own directories. /run
  # starts empty, as after a boot (no /run/netns, no /run/cni).
  local init
  init="set -e
hostname node$i
mount --rbind /sys/fs/cgroup '$d/cg'
mount -t sysfs sysfs /sys
mount --move '$d/cg' /sys/fs/cgroup
mount --make-rshared /
mount --bind '$d/run' /run
mount --bind '$d/docker' /var/lib/docker
mount --bind '$d/etc-docker' /etc/docker
mount --bind '$d/cni' /var/lib/cni
mount --bind '$d/net.d' /etc/cni/net.d
mount --bind '$d/cniplug' /var/lib/cniplug
echo \$\$ > '$d/anchor.pid'
exec sleep infinity"
  setsid nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation slave -- bash -c "$init" \
    >>"$d/init.log" 2>&1 </dev/null &
  for _ in $(seq 100); do anchor_pid "$i" >/dev/null && break; sleep 0.05; done
  anchor_pid "$i" >/dev/null || { cat "$d/init.log" >&2; die "node$i did not boot (see above)"; }

  if [ "$MODE" = host ]; then
    in_node "$i" setsid "$CL/bin/cniplug" ${CNIPLUG_CLUSTER_CNIPLUG_ARGS:-} >>"$d/cniplug.log" 2>&1 </dev/null &
    for _ in $(seq 100); do [ -S "$d/run/docker/plugins/cniplug.sock" ] && break; sleep 0.05; done
    [ -S "$d/run/docker/plugins/cniplug.sock" ] || { tail "$d/cniplug.log" >&2; die "node$i: cniplug did not start"; }
  fi
  local exe=/usr/sbin/dockerd path=$PATH
  if [ "$ENGINE" = current ]; then exe=$ENGINE_BIN/dockerd; path=$ENGINE_BIN:$PATH; fi
  in_node "$i" env PATH="$path" setsid "$exe" --cgroup-parent "/$PREFIX-node$i" \
    --swarm-default-advertise-addr "$SUBNET.$((10 + i))" >>"$d/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 240); do
    DOCKER_HOST="unix://$d/run/docker.sock" docker info >/dev/null 2>&1 && break
    sleep 0.25
  done
  DOCKER_HOST="unix://$d/run/docker.sock" docker info >/dev/null 2>&1 ||
    { tail -20 "$d/dockerd.log" >&2; die "node$i: dockerd did not answer within 60 s"; }
}

node_shutdown() { # node_shutdown I clean|kill
  local i=$1 how=$2 d pid
  d=$(node_dir "$i")
  if [ "$how" = clean ] && anchor_pid "$i" >/dev/null; then
    if [ -f "$d/run/docker.pid" ] && pid=$(cat "$d/run/docker.pid") && [ -d "/proc/$pid" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 300); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    fi
    local pids
    pids=$(node_pids "$i")
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(node_pids "$i")" ] && break; sleep 0.2; done
  fi
  kill_node_pids "$i"
  ip netns del "$(node_ns "$i")" 2>/dev/null || true
  ip -n "$PREFIX-ul" link del "node$i" 2>/dev/null || true
  rm -f "$d/anchor.pid"
}

install_plugin() { # the managed plugin cniplug:latest on node I, from the bundle built once per `up`
  local i=$1 sock
  sock="unix://$(node_dir "$i")/run/docker.sock"
  if ! DOCKER_HOST=$sock docker plugin inspect cniplug:latest >/dev/null 2>&1; then
    DOCKER_HOST=$sock docker plugin create cniplug:latest "$CL/plugin" >/dev/null
  fi
  DOCKER_HOST=$sock docker plugin enable cniplug:latest >/dev/null 2>&1 || true
  DOCKER_HOST=$sock docker plugin inspect -f '{{.Enabled}}' cniplug:latest | grep -qx true ||
    die "node$i: the managed plugin cniplug:latest is not enabled"
}

cmd_up() {
  local n=3 mode=host engine=${CNIPLUG_ENGINE:-current}
  while [ $# -gt 0 ]; do
    case "$1" in
      --managed) mode=managed; shift ;;
      --engine) engine=$2; shift 2 ;;
      [0-9]*) n=$1; shift ;;
      *) die "up: unknown argument '$1'" ;;
    esac
  done
  [ "$n" -ge 1 ] && [ "$n" -le 20 ] || die "up: 1 to 20 nodes"
  [ ! -e "$CL/cluster.env" ] || die "a cluster is already up in $CL (scripts/cluster.sh down first)"
  local engine_bin=""
  case "$engine" in
    current) engine_bin=$(bash scripts/install-engine.sh | tail -n 1); [ -x "$engine_bin/dockerd" ] || die "the current engine did not build" ;;
    20.10) [ -x /usr/sbin/dockerd ] || die "Debian's docker.io is not installed (scripts/engine.sh start 20.10 installs it)" ;;
    *) die "unknown engine '$engine': want current or 20.10" ;;
  esac
  command -v nsenter >/dev/null && command -v unshare >/dev/null || die "nsenter and unshare (util-linux) are required"
  mkdir -p "$CL/bin"
  make -s build cni-plugins >&2
  install -m 0755 bin/cniplug "$CL/bin/cniplug"
  if [ "$mode" = managed ]; then
    # The bundle is built by the host's dockerd (docker build); every node creates the plugin from it.
    scripts/build-plugin.sh -o "$CL/plugin" --no-create >&2
  fi
  printf 'NODES=%s\nMODE=%s\nENGINE=%s\nENGINE_BIN=%s\n' "$n" "$mode" "$engine" "$engine_bin" >"$CL/cluster.env"
  underlay_up
  local i
  for i in $(seq "$n"); do
    node_boot "$i"
    DOCKER_HOST="unix://$(node_dir "$i")/run/docker.sock" bash scripts/busybox-image.sh >/dev/null
    [ "$mode" = host ] || install_plugin "$i"
    say "node$i up: $SUBNET.$((10 + i)), $(DOCKER_HOST="unix://$(node_dir "$i")/run/docker.sock" docker version --format '{{.Server.Version}}'), cniplug $mode"
  done
}

cmd_down() {
  if [ -f "$CL/cluster.env" ]; then
    # shellcheck disable=SC1091
    . "$CL/cluster.env"
    local i
    for i in $(seq "$NODES"); do node_shutdown "$i" kill; done
  fi
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do ip netns del "$ns"; done
  # Nothing of the cluster may stay mounted (a node's namespace would keep its mounts alive).
  if grep -q " $CL" /proc/self/mountinfo; then
    die "mounts under $CL are left: $(grep " $CL" /proc/self/mountinfo | awk '{print $5}' | tr '\n' ' ')"
  fi
  rm -rf "$CL"
  local left=""
  ip netns list | grep -q "^$PREFIX-" && left+=" netns"
  pgrep -f "$CL/" >/dev/null && left+=" processes($(pgrep -f "$CL/" | tr '\n' ' '))"
  [ -z "$left" ] || die "down: left on the host:$left"
  say "cluster down, nothing left on the host"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  nodes) node_index node1 >/dev/null; . "$CL/cluster.env"; for i in $(seq "$NODES"); do echo "node$i"; done ;;
  exec) [ $# -ge 2 ] || die "usage: exec NODE CMD..."; i=$(node_index "$1"); shift; in_node "$i" "$@" ;;
  ip) i=$(node_index "${1:-}"); echo "$SUBNET.$((10 + i))" ;;
  socket) i=$(node_index "${1:-}"); echo "unix://$(node_dir "$i")/run/docker.sock" ;;
  stop) i=$(node_index "${1:-}"); node_shutdown "$i" clean ;;
  kill) i=$(node_index "${1:-}"); node_shutdown "$i" kill ;;
  start)
    i=$(node_index "${1:-}")
    ! anchor_pid "$i" >/dev/null || die "node$i is running"
    node_boot "$i"
    ;;
  isolate) i=$(node_index "${1:-}"); ip -n "$PREFIX-ul" link set "node$i" down ;;
  rejoin) i=$(node_index "${1:-}"); ip -n "$PREFIX-ul" link set "node$i" up ;;
  -h|--help|help|"") sed -n '2,24p' "$0" ;;
  *) die "unknown command '$cmd' (see --help)" ;;
esac
