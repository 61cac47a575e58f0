package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPU per process group. /proc/<pid>/stat has the CPU time of the processes alive at either end of a
// measurement window; a process that exits inside the window (a CNI plugin, an iptables exec, runc, a
// container's shim) is gone by then and only shows up in its parent's cutime/cstime, mixed with its siblings.
// So that the iptables execs a CNI plugin runs can be told from the plugin, the bench also listens to the
// kernel's taskstats exit records (genetlink TASKSTATS, one per exiting thread with its comm, tgid, parent and
// CPU time): every process is counted by its own CPU time, alive ones from /proc, exited ones from their
// records, and attributed to a group by its comm and its ancestry.

// The process groups of the CPU split.
const (
	groupDockerd    = "dockerd"          // dockerd and what it runs (docker-proxy), except firewall execs
	groupContainerd = "containerd"       // containerd, containerd-shim-runc-v2, runc and the container's own processes
	groupCniplug    = "cniplug"          // the bench's cniplug process itself
	groupCNI        = "CNI plugins"      // processes cniplug runs (bridge, host-local, portmap, ...) and theirs, except firewall execs
	groupCLI        = "docker CLI"       // the docker commands the bench runs
	groupBench      = "bench"            // the bench process (it serves the veth-only driver) and its other commands
	groupKernel     = "kernel threads"   // kthreadd's children (netns cleanup, kworkers)
	groupOther      = "other processes"  // everything else on the host
	groupFirewall   = "iptables/nft"     // prefix of the firewall groups, by the group of the process that ran them
	groupUnacct     = "not in processes" // the machine's busy time minus all groups (interrupts, lost records)
)

// firewallGroup is the group of a firewall exec run by a process of group parent.
func firewallGroup(parent string) string { return groupFirewall + " by " + parent }

// isFirewallExec says whether comm is an iptables, ip6tables, iptables-restore, ... or nft process.
func isFirewallExec(comm string) bool {
	for _, p := range []string{"iptables", "ip6tables", "nft", "xtables"} {
		if strings.HasPrefix(comm, p) {
			return true
		}
	}
	return false
}

// procInfo is one process: its parent, comm and own CPU time in seconds (no children's).
type procInfo struct {
	PPID int
	Comm string
	CPU  float64
}

// procSnapshot is every process on the host at one moment, by pid.
type procSnapshot map[int]procInfo

// parseProcStat reads pid, comm, ppid and utime+stime (seconds) from a /proc/<pid>/stat line.
func parseProcStat(line string) (pid int, p procInfo, err error) {
	open, close := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
	if open < 0 || close < open {
		return 0, p, fmt.Errorf("unexpected stat %q", line)
	}
	if pid, err = strconv.Atoi(strings.TrimSpace(line[:open])); err != nil {
		return 0, p, err
	}
	p.Comm = line[open+1 : close]
	// After "(comm) ": state, ppid, ..., utime (12th), stime (13th).
	f := strings.Fields(line[close+1:])
	if len(f) < 13 {
		return 0, p, fmt.Errorf("unexpected stat %q", line)
	}
	if p.PPID, err = strconv.Atoi(f[1]); err != nil {
		return 0, p, err
	}
	for _, v := range f[11:13] {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, p, err
		}
		p.CPU += n / clockTicks
	}
	return pid, p, nil
}

// takeProcSnapshot reads /proc/<pid>/stat of every process.
func takeProcSnapshot() (procSnapshot, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	s := procSnapshot{}
	for _, ent := range ents {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile: its exit record has it
		}
		if pid, p, err := parseProcStat(string(data)); err == nil {
			s[pid] = p
		}
	}
	return s, nil
}

// exitRecord is one exited thread's taskstats record.
type exitRecord struct {
	PID, TGID, PPID int
	Comm            string
	CPU             float64 // seconds, the thread's own user + system time
}

// roots are the long-running processes the groups are anchored at.
type roots struct{ dockerd, containerd, cniplug, bench int }

// attribute splits the CPU used between two snapshots by process group: processes alive at the end count with
// their CPU at the end minus at the start (0 if started since), exited ones with their exit records' CPU minus
// their CPU at the start. Exit records of a process alive at the end (its threads that exited) are ignored: the
// end's /proc has them.
func attribute(before, after procSnapshot, exits []exitRecord, r roots) map[string]float64 {
	info := map[int]procInfo{}
	exited := map[int]float64{}
	for _, x := range exits {
		if _, alive := after[x.TGID]; alive {
			continue
		}
		exited[x.TGID] += x.CPU
		if _, ok := info[x.TGID]; !ok || x.PID == x.TGID { // the leader's comm
			info[x.TGID] = procInfo{PPID: x.PPID, Comm: x.Comm}
		}
	}
	for pid, p := range before {
		info[pid] = p
	}
	for pid, p := range after {
		info[pid] = p
	}
	base := func(pid int) string {
		cur := pid
		for depth := 0; depth < 64; depth++ {
			p, known := info[cur]
			switch {
			case cur == r.cniplug && cur == pid:
				return groupCniplug
			case cur == r.cniplug:
				return groupCNI
			case cur == r.containerd || strings.HasPrefix(p.Comm, "containerd-shim") || strings.HasPrefix(p.Comm, "runc"):
				return groupContainerd
			case cur == r.dockerd:
				return groupDockerd
			case cur == r.bench && cur == pid:
				return groupBench
			case cur == r.bench:
				if info[pid].Comm == "docker" {
					return groupCLI
				}
				return groupBench
			case cur == 2:
				return groupKernel
			case cur <= 1 || !known:
				return groupOther
			}
			cur = p.PPID
		}
		return groupOther
	}
	group := func(pid int) string {
		if p := info[pid]; isFirewallExec(p.Comm) {
			return firewallGroup(base(p.PPID))
		}
		return base(pid)
	}
	out := map[string]float64{}
	for pid, p := range after {
		if d := p.CPU - before[pid].CPU; d > 0 {
			out[group(pid)] += d
		}
	}
	for pid, cpu := range exited {
		if d := cpu - before[pid].CPU; d > 0 {
			out[group(pid)] += d
		}
	}
	return out
}

// groupWindow is one measurement window of the CPU split.
type groupWindow struct {
	l      *exitListener
	mark   int
	before procSnapshot
}

// startGroups opens a window: nil when there is no exit listener.
func startGroups(l *exitListener) (*groupWindow, error) {
	if l == nil {
		return nil, nil
	}
	w := &groupWindow{l: l, mark: l.mark()}
	var err error
	w.before, err = takeProcSnapshot()
	return w, err
}

// end closes the window and splits its CPU by group.
func (w *groupWindow) end(r roots) (map[string]float64, error) {
	if w == nil {
		return nil, nil
	}
	after, err := takeProcSnapshot()
	if err != nil {
		return nil, err
	}
	time.Sleep(150 * time.Millisecond) // the records of processes that exited just before are read
	recs, err := w.l.since(w.mark)
	if err != nil {
		return nil, fmt.Errorf("taskstats: %w", err)
	}
	return attribute(w.before, after, recs, r), nil
}

// findRoots finds dockerd (its pid file, else by name), its containerd, and takes the bench's cniplug and itself.
func findRoots(cniplug int) roots {
	r := roots{cniplug: cniplug, bench: os.Getpid()}
	if data, err := os.ReadFile("/var/run/docker.pid"); err == nil {
		r.dockerd, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	s, _ := takeProcSnapshot()
	for pid, p := range s {
		if r.dockerd == 0 && p.Comm == "dockerd" {
			r.dockerd = pid
		}
	}
	for pid, p := range s {
		if p.Comm == "containerd" && (r.containerd == 0 || p.PPID == r.dockerd) {
			r.containerd = pid
		}
	}
	return r
}
