#!/usr/bin/env bash
# Builds the managed plugin's bundle (config.json and rootfs/) for one architecture, from this checkout and
# Debian's packages, with no base image and no Docker build:
#
#   scripts/build-rootfs.sh [-a amd64|arm64] [-r RELEASE] OUT
#
#   -a ARCH     target architecture (default: this machine's). Go cross-compiles; the iptables binaries and
#               their libraries come from Debian's packages of that architecture (apt-get download, after
#               `dpkg --add-architecture ARCH` and `apt-get update` for a foreign one).
#   -r TEXT     the content of /etc/cniplug-release (default: "cniplug <git describe>")
#   OUT         the bundle directory (OUT/rootfs is replaced)
#
# The rootfs holds static cniplug, the reference CNI plugins the bundled default network and Docker's features
# need (bridge, host-local, portmap, firewall, tuning, static; the others come from the host's CNI bin dir,
# mounted first), iptables-legacy and iptables-nft with their libraries, and nothing else: no shell, no package
# manager. It is reproducible: every file's time is SOURCE_DATE_EPOCH (default: the last commit's time) and the
# Go builds are trimmed, so two builds of one commit with the same Debian packages give the same rootfs. The
# last line printed is "rootfs sha256:<digest of a canonical tar of it> <size in bytes>".
#
# Needs Go, apt-get, dpkg-deb and readelf (binutils); Debian packages are cached in
# /var/cache/cniplug/debs/<arch> (CNIPLUG_DEB_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(dpkg --print-architecture) release=""
while [ $# -gt 0 ]; do
  case "$1" in
    -a) arch=$2; shift 2;;
    -r) release=$2; shift 2;;
    -h|--help) sed -n '2,21p' "$0"; exit 0;;
    -*) echo "unknown argument $1 (see --help)" >&2; exit 2;;
    *) break;;
  esac
done
[ $# = 1 ] || { echo "usage: $0 [-a amd64|arm64] [-r RELEASE] OUT" >&2; exit 2; }
out=$1
case "$arch" in
  # loader: the ELF interpreter's path (under /usr) and a relative link from there to the file.
  amd64) triplet=x86_64-linux-gnu loader=lib64/ld-linux-x86-64.so.2 loader_target=../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
         machine="Advanced Micro Devices X86-64";;
  arm64) triplet=aarch64-linux-gnu loader=lib/ld-linux-aarch64.so.1 loader_target=aarch64-linux-gnu/ld-linux-aarch64.so.1
         machine="AArch64";;
  *) echo "unsupported architecture $arch (amd64 or arm64)" >&2; exit 2;;
esac
[ -n "$release" ] || release="cniplug $(git describe --always --dirty 2>/dev/null || echo unknown)"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
say() { printf '== %s\n' "$*" >&2; }

# The CNI plugins bundled as a fallback bin dir. The rest of the reference plugins (ptp, macvlan, host-device,
# dhcp, bandwidth) add 27 MiB: they are taken from the host's bin dir, mounted before the bundled one.
bundled_plugins="main/bridge ipam/host-local meta/portmap meta/firewall meta/tuning ipam/static"
# Debian packages: iptables (both backends' multi-call binaries and extensions) and what it links.
debs="iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libc6 netbase"

work=$(mktemp -d /var/tmp/cniplug-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

say "building cniplug and the bundled CNI plugins for linux/$arch"
gobuild() { CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags='-s -w -buildid=' "$@"; }
mkdir -p "$root/usr/local/bin" "$root/opt/cniplug/cni/bin" "$root/opt/cniplug/cni/net.d"
gobuild -o "$root/usr/local/bin/cniplug" ./cmd/cniplug
# shellcheck disable=SC2086
gobuild -o "$root/opt/cniplug/cni/bin/" $(printf 'github.com/containernetworking/plugins/plugins/%s ' $bundled_plugins)
cp packaging/cni/*.conflist "$root/opt/cniplug/cni/net.d/"

say "fetching Debian's packages for $arch"
cache=${CNIPLUG_DEB_CACHE:-/var/cache/cniplug/debs}/$arch
mkdir -p "$cache"
if [ "$arch" != "$(dpkg --print-architecture)" ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
  dpkg --add-architecture "$arch"
  apt-get update -qq
fi
for p in $debs; do
  spec=$p:$arch
  [ "$p" = netbase ] && spec=$p # architecture-independent
  # The candidate version's file name, as apt would store it; downloaded once.
  file=$(apt-get download --print-uris "$spec" 2>/dev/null | awk '{print $2}' | head -1)
  if [ -z "$file" ]; then
    apt-get update -qq
    file=$(apt-get download --print-uris "$spec" | awk '{print $2}' | head -1)
  fi
  [ -n "$file" ] || { echo "no Debian package $spec in the apt sources" >&2; exit 1; }
  # As root into a root-owned cache: apt's _apt sandbox user could not write there.
  [ -s "$cache/$file" ] || (cd "$cache" && apt-get download -qq -o APT::Sandbox::User=root "$spec" >&2)
  dpkg-deb -x "$cache/$file" "$work/debs"
done

say "assembling the rootfs"
# Debian's usr-merged layout: /lib, /lib64, /bin and /sbin are links into /usr.
mkdir -p "$root/usr/lib/$triplet" "$root/usr/sbin" "$root/usr/lib64" "$root/etc"
for d in lib lib64 bin sbin; do
  mkdir -p "$root/usr/$d"
  ln -sfn "usr/$d" "$root/$d"
done
d=$work/debs
# iptables: the multi-call binaries and the names that select their mode (argv[0]); plain iptables is nft,
# Debian's default.
cp -a "$d/usr/sbin/xtables-legacy-multi" "$d/usr/sbin/xtables-nft-multi" "$root/usr/sbin/"
for b in legacy nft; do
  for t in iptables ip6tables; do
    for s in "" -save -restore; do
      ln -sfn "xtables-$b-multi" "$root/usr/sbin/$t-$b$s"
    done
  done
done
for t in iptables ip6tables; do
  for s in "" -save -restore; do
    ln -sfn "$t-nft$s" "$root/usr/sbin/$t$s"
  done
done
# The extensions: those the CNI plugins, Docker-like rules and common chains use (on arm64 each is at least a
# 64 KiB page, and all 122 of them take 8 MiB). Not ebtables' and arptables', nor rarely used ones such as
# TPROXY, SYNPROXY, osf, time or the IPv6 extension headers.
mkdir -p "$root/usr/lib/$triplet/xtables"
for x in CONNMARK CT DNAT DSCP HL LOG MARK MASQUERADE NAT NETMAP NFLOG NFQUEUE NOTRACK REDIRECT REJECT SET SNAT \
  TCPMSS TOS TTL addrtype bpf comment connlimit connmark conntrack devgroup dscp hashlimit helper hl icmp icmp6 \
  iprange ipvs length limit mac mark multiport owner physdev pkttype policy recent rpfilter sctp set socket \
  standard state statistic string tcp tcpmss tos ttl u32 udp; do
  for f in "$d/usr/lib/$triplet/xtables/"lib{xt,ipt,ip6t}_"$x".so; do
    [ -e "$f" ] || continue
    cp -a "$f" "$root/usr/lib/$triplet/xtables/"
    [ -L "$f" ] && cp -a "$d/usr/lib/$triplet/xtables/$(readlink "$f")" "$root/usr/lib/$triplet/xtables/"
  done
done
# The libraries: those of the library packages whole, of libc6 only what iptables links.
for lib in "$d"/usr/lib/"$triplet"/*.so.* "$d"/lib/"$triplet"/*.so.*; do
  [ -e "$lib" ] || continue
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|lib[a-z]*tables*.so.*|libip[46]tc.so.*|libnftnl.so.*|libmnl.so.*|libnetfilter_conntrack.so.*|libnfnetlink.so.*|ld-linux*) cp -a "$lib" "$root/usr/lib/$triplet/";;
  esac
done
ln -sfn "$loader_target" "$root/usr/$loader"
[ -f "$root/usr/$loader" ] || { echo "the ELF interpreter /$loader is not in Debian's libc6 for $arch" >&2; exit 1; }
cp "$d/etc/protocols" "$root/etc/protocols"

# The directories the plugin's config mounts over, and the paths that point into the host's /run (mounted at
# /host/run): staging namespaces (/run/netns), flannel's subnet file, the DHCP plugin's socket (/run/cni), and
# the containers' namespaces Docker names at Join (/run/docker/netns; /run/docker/plugins stays the plugin's).
mkdir -p "$root/host/run" "$root/etc/cni/net.d" "$root/opt/cni/bin" "$root/var/lib/cni" "$root/var/lib/cniplug" \
  "$root/run/docker" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
for l in netns flannel cni; do ln -sfn "/host/run/$l" "$root/run/$l"; done
ln -sfn /host/run/docker/netns "$root/run/docker/netns"
ln -sfn ../run "$root/var/run"
chmod 1777 "$root/tmp"
printf '%s\n' "$release" >"$root/etc/cniplug-release"

say "checking the rootfs"
# Every ELF file is for the target machine, and every library it needs is in the rootfs.
missing=0
while IFS= read -r f; do
  header=$(readelf -h "$f" 2>/dev/null) || continue
  grep -q "Machine: *$machine" <<<"$header" || { echo "$f is not a $arch binary" >&2; missing=1; }
  for need in $(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -e "$root/usr/lib/$triplet/$need" ] || { echo "${f#"$root"} needs $need, which is not in the rootfs" >&2; missing=1; }
  done
done < <(find "$root" -type f)
# Every link resolves, but those into the host's /run (mounted at /host/run when the plugin runs).
while IFS= read -r l; do
  case "$(readlink "$l")" in /host/run/*) ;; *) echo "${l#"$root"} is a dangling link" >&2; missing=1;; esac
done < <(find "$root" -xtype l)
[ $missing = 0 ] || exit 1

# Reproducible metadata: owner root, no group or other write, every time SOURCE_DATE_EPOCH.
chown -R 0:0 "$root"
chmod -R go-w "$root"
chmod 1777 "$root/tmp"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
rm -rf "$out/rootfs"
mv "$root" "$out/rootfs"
cp config.json "$out/config.json"
size=$(du -sb "$out/rootfs" | cut -f1)
digest=$(tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$out/rootfs" -cf - . | sha256sum | cut -d' ' -f1)
say "plugin bundle for $arch in $out ($((size / 1024 / 1024)) MiB)"
echo "rootfs sha256:$digest $size"
