# cniplug build, test and install targets. Tests that need root, dockerd or CNI plugins skip with a reason
# when those are missing; `scripts/setup.sh` provides them.
GO       ?= go
PREFIX   ?= /usr/local
CNI_BIN  ?= /opt/cni/bin

# Reference CNI plugins, pinned by go.mod (tool directives).
CNI_PLUGIN_PKGS := $(addprefix github.com/containernetworking/plugins/plugins/,main/bridge main/ptp main/macvlan main/host-device ipam/host-local ipam/static meta/portmap meta/firewall meta/tuning meta/bandwidth)

# Tests share one host (links, netns, iptables, dockerd) and end with host-wide leak checks, so test runs
# never overlap: each takes this lock (-o: processes a test leaves running, such as a restarted dockerd,
# must not inherit it).
TESTLOCK := flock -o /tmp/cniplug-tests.lock

.PHONY: build cni-plugins test test-unit test-e2e vet fuzz bench clean

build:
	CGO_ENABLED=0 $(GO) build -o bin/cniplug .

# Builds the pinned reference plugins into bin/cni (used by the tests; setup.sh installs them to $(CNI_BIN)).
cni-plugins:
	@mkdir -p bin/cni
	CGO_ENABLED=0 $(GO) build -o bin/cni/ $(CNI_PLUGIN_PKGS)

vet:
	$(GO) vet ./...

# The whole suite: unit tests (real netns + real CNI plugins) and end-to-end tests (real dockerd).
test: build cni-plugins vet
	$(TESTLOCK) $(GO) test -count=1 -p 1 -timeout 25m ./...

test-unit: build cni-plugins
	$(TESTLOCK) $(GO) test -count=1 -p 1 -timeout 10m $$($(GO) list ./... | grep -v /tests)

test-e2e: build cni-plugins
	$(TESTLOCK) $(GO) test -count=1 -v -timeout 20m ./tests/

fuzz:
	$(GO) test -run XXX -fuzz FuzzParseNetwork -fuzztime 30s ./cnibridge/
	$(GO) test -run XXX -fuzz FuzzHandler -fuzztime 30s ./plugin/
	$(GO) test -run XXX -fuzz FuzzParseDockerPortmap -fuzztime 30s ./hostports/
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime 30s ./cniargs/
	$(GO) test -run XXX -fuzz FuzzDecodeStrict -fuzztime 30s ./plugin/
	$(GO) test -run XXX -fuzz FuzzAdminHandler -fuzztime 30s ./plugin/

# Benchmark against Docker's bridge, --net=none and Podman (root, dockerd; ~10 min on 2 cores): writes
# bench/out/results.md, results.json and chart.png. It changes links, netns and iptables, so it takes the
# test lock. Iteration counts are flags: make bench BENCHFLAGS='-n 10 -skip-podman'.
bench: build cni-plugins
	$(GO) build -o bin/cniplug-bench ./bench/cmd/cniplug-bench
	$(TESTLOCK) bin/cniplug-bench -out bench/out $(BENCHFLAGS)

clean:
	rm -rf bin
