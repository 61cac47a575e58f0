package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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

// exitListener collects taskstats exit records of every CPU.
type exitListener struct {
	fd   int
	mu   sync.Mutex
	recs []exitRecord
	err  error
}

// startExitListener registers for the exit records of all CPUs.
func startExitListener() (*exitListener, error) {
	fam, err := netlink.GenlFamilyGet("TASKSTATS")
	if err != nil {
		return nil, fmt.Errorf("taskstats: %w", err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	cpus, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	mask := append([]byte(strings.TrimSpace(string(cpus))), 0)
	attrLen := 4 + len(mask)
	msg := make([]byte, 16+4+(attrLen+3)&^3)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], fam.ID)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	msg[16] = unix.TASKSTATS_CMD_GET
	msg[17] = 1 // TASKSTATS_GENL_VERSION
	binary.NativeEndian.PutUint16(msg[20:], uint16(attrLen))
	binary.NativeEndian.PutUint16(msg[22:], unix.TASKSTATS_CMD_ATTR_REGISTER_CPUMASK)
	copy(msg[24:], mask)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("taskstats register: %w", err)
	}
	l := &exitListener{fd: fd}
	acked := make(chan error, 1)
	go l.read(fam.ID, acked)
	select {
	case err := <-acked:
		if err != nil {
			l.close()
			return nil, fmt.Errorf("taskstats register: %w", err)
		}
	case <-time.After(5 * time.Second):
		l.close()
		return nil, fmt.Errorf("taskstats register: no answer")
	}
	return l, nil
}

func (l *exitListener) read(family uint16, acked chan<- error) {
	buf := make([]byte, 1<<20)
	for {
		n, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.mu.Lock()
			if err != unix.EBADF {
				l.err = err // ENOBUFS: records were lost
			}
			l.mu.Unlock()
			if err == unix.ENOBUFS {
				continue
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			switch {
			case m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4:
				errno := int32(binary.NativeEndian.Uint32(m.Data))
				select {
				case acked <- map[bool]error{true: nil, false: syscall.Errno(-errno)}[errno == 0]:
				default:
				}
			case m.Header.Type == family && len(m.Data) > 4:
				l.parse(m.Data[4:])
			}
		}
	}
}

// parse takes the TASKSTATS_TYPE_AGGR_PID records (one per exiting thread) of a message's attributes.
func (l *exitListener) parse(attrs []byte) {
	for len(attrs) >= 4 {
		alen := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if alen < 4 || alen > len(attrs) {
			return
		}
		if typ == unix.TASKSTATS_TYPE_AGGR_PID {
			inner := attrs[4:alen]
			for len(inner) >= 4 {
				ilen := int(binary.NativeEndian.Uint16(inner))
				ityp := binary.NativeEndian.Uint16(inner[2:]) & 0x3fff
				if ilen < 4 || ilen > len(inner) {
					break
				}
				if ityp == unix.TASKSTATS_TYPE_STATS {
					var ts unix.Taskstats
					copy(unsafe.Slice((*byte)(unsafe.Pointer(&ts)), unsafe.Sizeof(ts)), inner[4:ilen])
					l.add(&ts)
				}
				inner = inner[(ilen+3)&^3:]
			}
		}
		if (alen+3)&^3 >= len(attrs) {
			return
		}
		attrs = attrs[(alen+3)&^3:]
	}
}

func (l *exitListener) add(ts *unix.Taskstats) {
	comm := make([]byte, 0, len(ts.Ac_comm))
	for _, c := range ts.Ac_comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	tgid := int(ts.Ac_tgid)
	if tgid == 0 {
		tgid = int(ts.Ac_pid) // kernels before taskstats version 12
	}
	l.mu.Lock()
	l.recs = append(l.recs, exitRecord{PID: int(ts.Ac_pid), TGID: tgid, PPID: int(ts.Ac_ppid), Comm: string(comm), CPU: float64(ts.Ac_utime+ts.Ac_stime) / 1e6})
	l.mu.Unlock()
}

// mark is the number of records so far, where a window starts or ends.
func (l *exitListener) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recs)
}

// since returns the records from mark on, and the error (lost records) seen so far.
func (l *exitListener) since(mark int) ([]exitRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]exitRecord(nil), l.recs[mark:]...), l.err
}

func (l *exitListener) close() { unix.Close(l.fd) }

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
