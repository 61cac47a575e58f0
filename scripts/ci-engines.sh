#!/usr/bin/env bash
# The whole suite on every supported engine, one after the other (only one dockerd runs at a time):
#   1. the current engine (iptables firewall backend): `make test` (unit, e2e and cluster tests with the host
#      plugin, e2e and cluster tests with the managed plugin)
#   2. the current engine with --firewall-backend=nftables: the firewall-related e2e tests (host plugin)
#   3. Docker 20.10 (Debian's docker.io): the e2e suite and the cluster tests (three 20.10 nodes) with the host
#      plugin, and the swarm services test with the managed plugin
# Every stage runs even if an earlier one failed; the last line counts every PASS/FAIL/SKIP of every stage,
# and the exit status is non-zero if any stage failed. The current engine is running again at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/cniplug-ci-XXXXXX.log)
failed=()

stage() {
  local name=$1; shift
  printf '\n==== %s (%s)\n' "$name" "$(date -u +%H:%M:%S)" | tee -a "$log"
  local start=$SECONDS
  if ! "$@" 2>&1 | tee -a "$log"; then
    failed+=("$name")
  fi
  printf '==== %s done in %d s\n' "$name" $((SECONDS - start)) | tee -a "$log"
}

stage "current engine: unit + e2e (host and managed plugin)" \
  bash -c 'bash scripts/engine.sh start current && make test GOTESTFLAGS=-v'
stage "current engine, nftables firewall backend: firewall e2e tests" \
  bash -c 'sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && bash scripts/engine.sh start current --firewall-backend=nftables && make test-e2e-firewall'
stage "Docker 20.10: e2e and cluster tests (host plugin), swarm services (managed plugin)" \
  bash -c 'bash scripts/engine.sh start 20.10 && make test-e2e && flock -o /tmp/cniplug-tests.lock env CNIPLUG_E2E_MODE=managed go test -count=1 -v -timeout 15m -run TestSwarmServices ./tests/cluster/'
stage "back to the current engine" bash scripts/engine.sh start current

pass=$(grep -cE '^\s*--- PASS:' "$log")
fail=$(grep -cE '^\s*--- FAIL:' "$log")
skip=$(grep -cE '^\s*--- SKIP:' "$log")
# A stage that failed before its tests ran (build, engine start) counts as a failure too.
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nfailed stages:\n'; printf '  %s\n' "${failed[@]}"
  [ "$fail" -eq 0 ] && fail=${#failed[@]}
fi
# What each failed test said, last, where a reader of the run's tail sees it first: the failure messages
# themselves are otherwise far above, behind the plugin log a failed e2e test dumps.
if [ "$fail" -gt 0 ]; then
  printf '\nwhat the failed tests said (their last lines naming a _test.go line):\n'
  bash scripts/failure-digest.sh "$log"
fi
echo "full log: $log"
echo "$pass passed, $fail failed, $skip skipped"
[ ${#failed[@]} -eq 0 ]
