#!/usr/bin/env bash
# Starts, stops and names the Docker engine cniplug runs against. Two engines are supported and tested:
#   current  today's engine (dockerd 29.x, built by scripts/install-engine.sh and cached by version), with its
#            own containerd 2.x, runc and docker-proxy; data in /var/lib/docker-current
#   20.10    Debian's docker.io (end-of-life, still supported); data in /var/lib/docker
# Only one dockerd runs at a time, on the default socket, so the docker CLI and the tests need no settings.
#
#   scripts/engine.sh start [current|20.10] [extra dockerd flags...]   (default: $CNIPLUG_ENGINE or current)
#   scripts/engine.sh stop
#   scripts/engine.sh which        prints the running engine's name and version
#
# Example: scripts/engine.sh start current --firewall-backend=nftables
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=/var/log/cniplug-dockerd.log

die() { echo "engine.sh: $*" >&2; exit 1; }

# The host's dockerd only: the nodes of scripts/cluster.sh run theirs in their own network namespaces.
dockerd_pids() { pgrep -x --nslist net --ns $$ dockerd || true; }

stop_engine() {
  if [ -d /run/systemd/system ] && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl stop docker docker.socket >/dev/null 2>&1 || true
  fi
  local pids
  pids=$(dockerd_pids)
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 150); do
    [ -z "$(dockerd_pids)" ] && break
    sleep 0.2
  done
  pids=$(dockerd_pids)
  if [ -n "$pids" ]; then
    echo "engine.sh: dockerd did not stop within 30 s; killing it" >&2
    kill -KILL $pids 2>/dev/null || true
    sleep 1
  fi
  # The containerd that dockerd supervises exits with it; wait so the next engine does not find its socket.
  for _ in $(seq 50); do
    pgrep --nslist net --ns $$ -f '/var/run/docker/containerd/containerd.toml' >/dev/null || break
    sleep 0.2
  done
}

start_engine() {
  local which=$1; shift
  local path=$PATH
  local args=()
  case "$which" in
    current)
      local bin
      bin=$(bash scripts/install-engine.sh | tail -n 1)
      [ -x "$bin/dockerd" ] || die "the current engine did not build (see above)"
      path="$bin:$PATH"
      args=(--data-root /var/lib/docker-current)
      ;;
    20.10)
      if ! dpkg -s docker.io >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
      fi
      [ -x /usr/sbin/dockerd ] || die "Debian's docker.io has no /usr/sbin/dockerd"
      args=()
      ;;
    *) die "unknown engine '$which': want current or 20.10" ;;
  esac
  stop_engine
  # A killed dockerd leaves its pid file and its containerd's; a reused pid would make the new one wait.
  rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
  local exe=/usr/sbin/dockerd
  [ "$which" = current ] && exe="${path%%:*}/dockerd"
  echo "== starting $which engine: $exe ${args[*]} $*" >>"$LOG"
  # setsid: dockerd outlives this script and the shell that ran it. PATH is how dockerd finds containerd,
  # the shim, runc and docker-proxy; the tests restart dockerd with this same environment.
  PATH="$path" setsid "$exe" "${args[@]}" "$@" >>"$LOG" 2>&1 </dev/null &
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || die "dockerd ($which) did not start; see $LOG"
  echo "$which engine: dockerd $(docker version --format '{{.Server.Version}}') is up"
}

which_engine() {
  docker version --format '{{.Server.Version}}' 2>/dev/null || die "no dockerd answers"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
[ "$(id -u)" = 0 ] || die "must run as root"
case "$cmd" in
  start)
    engine=${CNIPLUG_ENGINE:-current}
    if [ $# -gt 0 ] && [[ "$1" != -* ]]; then engine=$1; shift; fi
    start_engine "$engine" "$@"
    ;;
  stop) stop_engine ;;
  which) which_engine ;;
  *) die "usage: engine.sh start [current|20.10] [dockerd flags...] | stop | which" ;;
esac
