package main

import (
	"math"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	pid, p, err := parseProcStat("4242 (iptables (x)) S 17 4242 4242 0 -1 4194560 100 0 0 0 7 3 11 13 20 0 1 0 123 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if pid != 4242 || p.PPID != 17 || p.Comm != "iptables (x)" || math.Abs(p.CPU-0.10) > 1e-9 {
		t.Errorf("got %d %+v", pid, p)
	}
	if _, _, err := parseProcStat("garbage"); err == nil {
		t.Error("garbage parsed")
	}
}

// The split of a window: the long-running roots by their /proc deltas, exited processes by their exit records,
// grouped by ancestry; firewall execs by who ran them; threads that exited in a process alive at the end are
// not counted twice.
func TestAttribute(t *testing.T) {
	r := roots{dockerd: 100, containerd: 101, cniplug: 200, bench: 300}
	before := procSnapshot{
		1: {PPID: 0, Comm: "init", CPU: 5}, 2: {PPID: 0, Comm: "kthreadd"}, 50: {PPID: 2, Comm: "kworker/0:1", CPU: 1},
		100: {PPID: 1, Comm: "dockerd", CPU: 10}, 101: {PPID: 100, Comm: "containerd", CPU: 4},
		200: {PPID: 300, Comm: "cniplug", CPU: 2}, 300: {PPID: 1, Comm: "cniplug-bench", CPU: 3},
		400: {PPID: 1, Comm: "containerd-shim", CPU: 0.5}, // alive at the start, exits in the window
		900: {PPID: 1, Comm: "sshd", CPU: 1},
	}
	after := procSnapshot{
		1: {PPID: 0, Comm: "init", CPU: 5.5}, 2: {PPID: 0, Comm: "kthreadd"}, 50: {PPID: 2, Comm: "kworker/0:1", CPU: 1.2},
		100: {PPID: 1, Comm: "dockerd", CPU: 10.3}, 101: {PPID: 100, Comm: "containerd", CPU: 4.1},
		200: {PPID: 300, Comm: "cniplug", CPU: 2.05}, 300: {PPID: 1, Comm: "cniplug-bench", CPU: 3.01},
		401: {PPID: 1, Comm: "containerd-shim", CPU: 0.02}, // started in the window
		900: {PPID: 1, Comm: "sshd", CPU: 1.1},
	}
	exits := []exitRecord{
		{PID: 500, TGID: 500, PPID: 200, Comm: "bridge", CPU: 0.03}, {PID: 501, TGID: 500, PPID: 200, Comm: "bridge", CPU: 0.01},
		{PID: 510, TGID: 510, PPID: 500, Comm: "host-local", CPU: 0.005},
		{PID: 520, TGID: 520, PPID: 500, Comm: "iptables", CPU: 0.004}, // the bridge plugin's
		{PID: 530, TGID: 530, PPID: 200, Comm: "iptables-restor", CPU: 0.006},
		{PID: 540, TGID: 540, PPID: 100, Comm: "docker-proxy", CPU: 0.002},
		{PID: 550, TGID: 550, PPID: 100, Comm: "ip6tables", CPU: 0.001},
		{PID: 400, TGID: 400, PPID: 1, Comm: "containerd-shim", CPU: 0.7}, // 0.2 of it in the window
		{PID: 560, TGID: 560, PPID: 400, Comm: "runc:[2:INIT]", CPU: 0.01},
		{PID: 570, TGID: 570, PPID: 400, Comm: "true", CPU: 0.001}, // the container's process, under its shim
		{PID: 580, TGID: 580, PPID: 101, Comm: "containerd-shim", CPU: 0.003},
		{PID: 600, TGID: 600, PPID: 300, Comm: "docker", CPU: 0.04},
		{PID: 610, TGID: 610, PPID: 300, Comm: "ip", CPU: 0.002},
		{PID: 102, TGID: 100, PPID: 1, Comm: "dockerd", CPU: 9}, // a dockerd thread: /proc has it
	}
	got := attribute(before, after, exits, r)
	want := map[string]float64{
		groupDockerd: 0.3 + 0.002, groupContainerd: 0.1 + 0.02 + 0.2 + 0.01 + 0.001 + 0.003, groupCniplug: 0.05,
		groupCNI: 0.04 + 0.005, firewallGroup(groupCNI): 0.004, firewallGroup(groupCniplug): 0.006, firewallGroup(groupDockerd): 0.001,
		groupCLI: 0.04, groupBench: 0.01 + 0.002, groupKernel: 0.2, groupOther: 0.5 + 0.1,
	}
	for g, v := range want {
		if math.Abs(got[g]-v) > 1e-9 {
			t.Errorf("%s: got %.4f, want %.4f", g, got[g], v)
		}
	}
	for g := range got {
		if _, ok := want[g]; !ok {
			t.Errorf("unexpected group %s: %v", g, got[g])
		}
	}
}

func TestCeiling(t *testing.T) {
	// 2 cores, 300 ms on Docker's bridge and 100 ms in the plugins per lifecycle: 5 lifecycles/s.
	if got := ceiling(2, 0.3, 0.1); math.Abs(got-5) > 1e-9 {
		t.Errorf("ceiling = %v", got)
	}
	if ceiling(0, 0.3, 0.1) != 0 || ceiling(2, 0, 0) != 0 {
		t.Error("no ceiling without cores or CPU")
	}
	r := fakeResults()
	r.Chains = map[string]*chainCPU{chainMain: {Iterations: 5, Plugins: 0.1}}
	// bridge: 2.4 s over 8 lifecycles = 300 ms.
	if got := r.ceilingOf("cniplug"); math.Abs(got-5) > 1e-9 {
		t.Errorf("ceilingOf(cniplug) = %v", got)
	}
	if got := r.ceilingOf(kindMasq); got != 0 {
		t.Errorf("ceilingOf(masq) without its chain = %v", got)
	}
}

// The exit listener sees a process of ours exit, with its parent and CPU time.
func TestExitListener(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	l, err := startExitListener()
	if err != nil {
		t.Skipf("no taskstats: %v", err)
	}
	defer l.close()
	w, err := startGroups(l)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	recs, err := l.since(w.mark)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range recs {
		if x.TGID == cmd.Process.Pid {
			if x.PPID != os.Getpid() || x.Comm != "sh" || x.CPU <= 0 {
				t.Errorf("record %+v", x)
			}
			groups, err := w.end(roots{bench: os.Getpid()})
			if err != nil {
				t.Fatal(err)
			}
			if groups[groupBench] < x.CPU {
				t.Errorf("groups %v lack the shell's %.3f s", groups, x.CPU)
			}
			return
		}
	}
	t.Errorf("no exit record of pid %d among %d", cmd.Process.Pid, len(recs))
}
