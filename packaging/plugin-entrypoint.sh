#!/bin/sh
# Entry point of the managed plugin. /run/netns is a symlink to the host's /run/netns (mounted at /host/run);
# create it on the host if this is the first netns user since boot, so staging namespaces are pinned where
# the host sees them.
set -e
mkdir -p /host/run/netns
exec /usr/local/bin/cniplug "$@"
