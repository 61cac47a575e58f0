#!/usr/bin/env bash
# From a fresh Debian machine to a working cniplug: installs what is missing (docker.io, iptables, iproute2,
# busybox-static, dnsmasq-base, iperf3), starts dockerd (today's engine by default, built and cached by scripts/install-engine.sh;
# CNIPLUG_ENGINE=20.10 for Debian's), builds cniplug and the pinned reference CNI plugins, installs the plugins
# into /opt/cni/bin (never overwriting existing ones), adds a demo CNI bridge network, starts cniplug as a host
# (v1) plugin and shows two containers on that CNI network pinging each other. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root (sudo $0)" >&2; exit 1; }
command -v go >/dev/null || { echo "Go (the version in go.mod) is required to build cniplug" >&2; exit 1; }

say "packages"
need=()
# binutils' readelf checks the managed plugin's rootfs (scripts/build-rootfs.sh) and qemu-user-static runs its
# arm64 binaries in the release test; docker-registry serves the plugin push/install tests;
# dnsmasq-base (the binary only, no service) is the DHCP server of the DHCP tests (cnibridge and e2e); iperf3 is
# run inside containers' network namespaces by the cluster benchmark (make bench-cluster).
for p in docker.io iptables iproute2 busybox-static make binutils qemu-user-static docker-registry dnsmasq-base iperf3; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  echo "installed: ${need[*]}"
  # The tests run their own registry on 127.0.0.1; do not leave Debian's service listening on :5000.
  if [[ " ${need[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
else
  echo "all present"
fi

say "dockerd"
# The engine: CNIPLUG_ENGINE=current (today's Docker Engine 29.x, built from the Go module proxy and cached by
# version; the default) or 20.10 (Debian's docker.io). A dockerd that already answers is kept unless
# CNIPLUG_ENGINE asks for the other engine.
running=$(docker version --format '{{.Server.Version}}' 2>/dev/null || true)
case "$running" in
  "") running_engine="" ;;
  20.10.*) running_engine=20.10 ;;
  *) running_engine=current ;;
esac
want=${CNIPLUG_ENGINE:-${running_engine:-current}}
if [ "$want" != "$running_engine" ]; then
  bash scripts/engine.sh start "$want"
fi
echo "dockerd $(docker version --format '{{.Server.Version}}') is up ($want engine; switch with scripts/engine.sh start current|20.10)"

say "docker compose"
# Today's Compose as the docker CLI plugin, built from the Go module proxy and cached by version.
bash scripts/install-compose.sh >/dev/null
docker compose version

say "build"
make build cni-plugins
mkdir -p /opt/cni/bin
for f in bin/cni/*; do
  [ -e "/opt/cni/bin/$(basename "$f")" ] || install -m 0755 "$f" /opt/cni/bin/
done
install -m 0755 bin/cniplug /usr/local/bin/cniplug
scripts/busybox-image.sh

say "demo CNI network"
mkdir -p /etc/cni/net.d
demo=/etc/cni/net.d/50-cniplug-demo.conflist
if [ ! -e "$demo" ]; then
  cat >"$demo" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "cniplug-demo",
  "plugins": [
    {"type": "bridge", "bridge": "cniplug-demo0", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "firewall"}
  ]
}
JSON
fi
echo "$demo"

say "cniplug"
sock=/run/docker/plugins/cniplug.sock
# Restart a cniplug this script started before, so the binary just installed is the one serving.
if pkill -f '^/usr/local/bin/cniplug$'; then
  for _ in $(seq 40); do pgrep -f '^/usr/local/bin/cniplug$' >/dev/null || break; sleep 0.25; done
fi
rm -f "$sock"
nohup /usr/local/bin/cniplug >>/var/log/cniplug.log 2>&1 &
for _ in $(seq 40); do [ -S "$sock" ] && break; sleep 0.25; done
[ -S "$sock" ] || { echo "cniplug did not start; see /var/log/cniplug.log" >&2; exit 1; }
echo "cniplug serving on $sock (log: /var/log/cniplug.log)"

say "demo: two containers on the CNI bridge network ping each other"
net=cniplug-demo
cleanup() {
  docker rm -f cniplug-demo-a cniplug-demo-b >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  ip link del cniplug-demo0 >/dev/null 2>&1 || true # the bridge plugin leaves its bridge behind
}
trap cleanup EXIT
cleanup
docker network create -d cniplug --opt cni=cniplug-demo --ipam-driver cniplug --ipam-opt cni=cniplug-demo "$net"
docker run -d --name cniplug-demo-a --net "$net" cniplug-test/busybox sleep 60 >/dev/null
docker run -d --name cniplug-demo-b --net "$net" cniplug-test/busybox sleep 60 >/dev/null
b=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" cniplug-demo-b)
echo "cniplug-demo-b has $b"
docker exec cniplug-demo-a ping -c 2 -W 2 "$b"
echo
echo "cniplug works. Run the tests with: sudo make test"
