# Root filesystem of the cniplug managed Docker plugin (see config.json and scripts/build-plugin.sh).
#
# It holds prebuilt static binaries (`make build cni-plugins` first): cniplug itself and the reference CNI
# plugins pinned in go.mod, bundled as a fallback CNI bin dir, with a default CNI network. The base only has
# to supply /bin/sh and iptables (legacy and nf_tables; cniplug selects the host's backend at start).
#
# Online:  docker build -t cniplug-rootfs .
# Offline: BASE is any local Debian-like image, e.g. one made with debootstrap + `docker import` (which is
#          what scripts/build-plugin.sh does when debian:bookworm-slim is not available):
#          docker build --build-arg BASE=cniplug-base:bookworm -t cniplug-rootfs .
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# iptables is only installed when the base lacks it, so a base that has it builds with no network at all.
RUN if ! command -v iptables-legacy >/dev/null || ! command -v iptables-nft >/dev/null; then \
      apt-get update && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables && \
      rm -rf /var/lib/apt/lists/*; \
    fi && \
    iptables-legacy --version && iptables-nft --version

COPY bin/cniplug /usr/local/bin/cniplug
COPY packaging/plugin-entrypoint.sh /usr/local/bin/cniplug-entrypoint
COPY bin/cni/ /opt/cniplug/cni/bin/
COPY packaging/cni/ /opt/cniplug/cni/net.d/

# The host's /run is mounted at /host/run (config.json). The paths CNI plugins and cniplug use point into
# it, so they are the same inside the plugin and on the host: staging namespaces (/run/netns, which the
# host's DHCP daemon opens by path), flannel's subnet file, the DHCP daemon's socket (/run/cni), and the
# containers' namespaces whose paths Docker sends at Join (/var/run/docker/netns, for direct join; only that
# directory: /run/docker/plugins is where Docker expects this plugin's own socket).
RUN mkdir -p /host/run /etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/cniplug /run/docker && \
    for d in netns flannel cni; do rm -rf "/run/$d" && ln -s "/host/run/$d" "/run/$d"; done && \
    rm -rf /run/docker/netns && ln -s /host/run/docker/netns /run/docker/netns && \
    chmod 0755 /usr/local/bin/cniplug /usr/local/bin/cniplug-entrypoint /opt/cniplug/cni/bin/*

ENTRYPOINT ["/usr/local/bin/cniplug-entrypoint"]
