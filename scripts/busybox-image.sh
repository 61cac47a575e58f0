#!/usr/bin/env bash
# Builds the tiny local image used by the demo and the tests from Debian's busybox-static (no registry needed).
set -euo pipefail
image=${1:-cniplug-test/busybox:latest}
docker image inspect "$image" >/dev/null 2>&1 && exit 0
bb=/bin/busybox # from busybox-static: a static binary runs in an image with no libc
[ -x "$bb" ] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
cp "$bb" "$root/bin/busybox"
for app in $("$bb" --list); do [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image"
