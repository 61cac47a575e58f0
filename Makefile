# cniplug build, test and install targets. Tests that need root, dockerd or CNI plugins skip with a reason
# when those are missing; `scripts/setup.sh` provides them.
GO       ?= go
PREFIX   ?= /usr/local
CNI_BIN  ?= /opt/cni/bin
SYSTEMD_UNIT_DIR ?= /etc/systemd/system

# Reference CNI plugins, pinned by go.mod (tool directives).
CNI_PLUGIN_PKGS := $(addprefix github.com/containernetworking/plugins/plugins/,main/bridge main/ptp main/macvlan main/host-device ipam/host-local ipam/static ipam/dhcp meta/portmap meta/firewall meta/tuning meta/bandwidth)

# Tests share one host (links, netns, iptables, dockerd) and end with host-wide leak checks, so test runs
# never overlap: each takes this lock (-o: processes a test leaves running, such as a restarted dockerd,
# must not inherit it).
TESTLOCK := flock -o /tmp/cniplug-tests.lock
# Extra `go test` flags, e.g. GOTESTFLAGS=-v (.ci/run counts the PASS/FAIL lines).
GOTESTFLAGS ?=
# The end-to-end tests that exercise the host firewall: run again under dockerd --firewall-backend=nftables.
FIREWALL_TESTS := TestDockerFirewall|TestNetworkIsolation|TestMasqueradeOption|TestPublishPorts|TestPublishPortRangesAndHostIP|TestAddressingModes|TestConnectDisconnect|TestMultipleNetworks

.PHONY: build cni-plugins test test-unit test-e2e test-e2e-managed test-e2e-firewall test-cluster test-engines vet fuzz bench bench-cluster clean plugin release install

build:
	CGO_ENABLED=0 $(GO) build -o bin/cniplug ./cmd/cniplug

# Builds the pinned reference plugins into bin/cni (used by the tests; setup.sh installs them to $(CNI_BIN)).
cni-plugins:
	@mkdir -p bin/cni
	CGO_ENABLED=0 $(GO) build -o bin/cni/ $(CNI_PLUGIN_PKGS)

vet:
	$(GO) vet ./...

# The whole suite against the running dockerd: unit tests (real netns + real CNI plugins), end-to-end tests
# (real dockerd) and the multi-host tests on the cluster test-bed (scripts/cluster.sh: three Docker hosts
# running the same engine), the latter two once with cniplug as a host (v1) plugin and once as a managed
# plugin built from this checkout (swarm needs it).
test: build cni-plugins vet
	$(TESTLOCK) $(GO) test $(GOTESTFLAGS) -count=1 -p 1 -timeout 25m ./...
	$(TESTLOCK) env CNIPLUG_E2E_MODE=managed $(GO) test $(GOTESTFLAGS) -count=1 -p 1 -timeout 35m ./tests/...

# The suite on every supported engine, as CI runs it (scripts/ci-engines.sh): the current engine with both
# plugin modes, its nftables firewall backend for the firewall tests, and Docker 20.10 with the host plugin.
test-engines:
	bash scripts/ci-engines.sh

test-unit: build cni-plugins
	$(TESTLOCK) $(GO) test $(GOTESTFLAGS) -count=1 -p 1 -timeout 10m $$($(GO) list ./... | grep -v /tests)

test-e2e: build cni-plugins
	$(TESTLOCK) $(GO) test -count=1 -v -p 1 -timeout 25m ./tests/...

# The end-to-end suite against the managed plugin (scripts/build-plugin.sh builds it; no registry needed).
test-e2e-managed: build cni-plugins
	$(TESTLOCK) env CNIPLUG_E2E_MODE=managed $(GO) test -count=1 -v -p 1 -timeout 35m ./tests/...

# The multi-host tests alone, on the cluster test-bed: per-host networks (host plugin), then swarm (managed).
test-cluster: build cni-plugins
	$(TESTLOCK) $(GO) test -count=1 -v -timeout 10m ./tests/cluster/
	$(TESTLOCK) env CNIPLUG_E2E_MODE=managed $(GO) test -count=1 -v -timeout 25m ./tests/cluster/

# The firewall-related end-to-end tests alone (host plugin), e.g. under another dockerd firewall backend.
test-e2e-firewall: build cni-plugins
	$(TESTLOCK) $(GO) test -count=1 -v -timeout 10m -run '^($(FIREWALL_TESTS))$$' ./tests/

# The managed plugin: builds its rootfs (offline if need be, see the README), then `docker plugin create`
# cniplug (replacing an existing one) and enables it. PLUGIN_NAME=... for another name.
plugin: build cni-plugins
	scripts/build-plugin.sh -n $(or $(PLUGIN_NAME),cniplug)

# Release: the managed plugin for amd64 and arm64, pushed as $(REGISTRY)/cniplug:$(VERSION)-<arch> (one tag per
# architecture: managed plugins cannot be installed from a manifest list). Reproducible for one commit.
release:
	@[ -n "$(VERSION)" ] && [ -n "$(REGISTRY)" ] || { echo "usage: make release VERSION=v1.2.3 REGISTRY=registry.example.com/you" >&2; exit 2; }
	scripts/release.sh "$(VERSION)" "$(REGISTRY)"

# Host (v1) mode: the binary and a systemd unit ordered before docker.service (enable it yourself:
# systemctl enable --now cniplug). DESTDIR stages a package.
install: build
	install -D -m 0755 bin/cniplug $(DESTDIR)$(PREFIX)/bin/cniplug
	sed 's#/usr/local/bin/cniplug#$(PREFIX)/bin/cniplug#' packaging/cniplug.service > cniplug.service.tmp
	install -D -m 0644 cniplug.service.tmp $(DESTDIR)$(SYSTEMD_UNIT_DIR)/cniplug.service
	rm -f cniplug.service.tmp
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed $(PREFIX)/bin/cniplug and $(SYSTEMD_UNIT_DIR)/cniplug.service; start it with: systemctl enable --now cniplug"

fuzz:
	$(GO) test -run XXX -fuzz FuzzParseNetwork -fuzztime 30s ./cnibridge/
	$(GO) test -run XXX -fuzz FuzzHandler -fuzztime 30s ./plugin/
	$(GO) test -run XXX -fuzz FuzzParseDockerPortmap -fuzztime 30s ./hostports/
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime 30s ./cniargs/
	$(GO) test -run XXX -fuzz FuzzDecodeStrict -fuzztime 30s ./plugin/
	$(GO) test -run XXX -fuzz FuzzAdminHandler -fuzztime 30s ./plugin/
	$(GO) test -run XXX -fuzz FuzzCheckMAC -fuzztime 30s ./naming/
	$(GO) test -run XXX -fuzz FuzzBoundName -fuzztime 30s ./naming/
	$(GO) test -run XXX -fuzz FuzzCheckNetworkID -fuzztime 30s ./driver/
	$(GO) test -run XXX -fuzz FuzzCheckSandboxKey -fuzztime 30s ./driver/
	$(GO) test -run XXX -fuzz FuzzValidateRequestAddress -fuzztime 30s ./ipam/

# Benchmark against Docker's bridge, --net=none and Podman (root, dockerd; ~10 min on 2 cores): writes
# bench/out/results.md, results.json and chart.png. It changes links, netns and iptables, so it takes the
# test lock. Iteration counts are flags: make bench BENCHFLAGS='-n 10 -skip-podman'.
bench: build cni-plugins
	$(GO) build -o bin/cniplug-bench ./bench/cmd/cniplug-bench
	$(TESTLOCK) bin/cniplug-bench -out bench/out $(BENCHFLAGS)

# cniplug against Docker's overlay on a 3-node swarm of this machine (scripts/cluster.sh, its own cluster
# cniplug-bench; root, iperf3; ~5 min on 2 cores): scaling a service 0 -> 30 -> 0, ping and iperf3 between task
# containers on two nodes. Writes bench/out-cluster/results.md and results.json. Takes the test lock (it adds
# netns, cgroups and dockerds to the host). E.g. make bench-cluster BENCHFLAGS='-reps 5'.
bench-cluster: build cni-plugins
	$(GO) build -o bin/cniplug-bench-cluster ./bench/cmd/cniplug-bench-cluster
	$(TESTLOCK) bin/cniplug-bench-cluster -out bench/out-cluster $(BENCHFLAGS)

clean:
	rm -rf bin
