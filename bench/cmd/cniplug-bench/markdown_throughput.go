package main

import (
	"fmt"
	"strconv"
	"strings"
)

// mdThroughput is the table of lifecycles per second by parallelism, the CPU they took split by process
// group, and the ceiling the chain allows.
func (r *results) mdThroughput(w printf) {
	o := r.Options
	kinds, labels := r.contenders()
	w("\n### Throughput, `docker run --rm` (%d lifecycles per cell)\n\n| |", o.ThroughputN)
	for _, p := range o.Parallelism {
		w(" %d parallel |", p)
	}
	for _, p := range o.Parallelism {
		w(" / bridge at %d |", p)
	}
	ceilings := r.Chains != nil && r.CPU["bridge"] != nil
	if ceilings {
		w(" chain's ceiling |")
		for _, p := range o.Parallelism {
			w(" of ceiling at %d |", p)
		}
	}
	cols := 2 * len(o.Parallelism)
	if ceilings {
		cols += 1 + len(o.Parallelism)
	}
	w("\n|---%s|\n", strings.Repeat("|---", cols))
	for i, k := range kinds {
		w("| %s |", labels[i])
		for _, p := range o.Parallelism {
			if v, ok := r.Throughput[k][p]; ok {
				w(" %.2f /s |", v)
			} else {
				w(" failed |")
			}
		}
		for _, p := range o.Parallelism {
			if v, ok := r.Throughput[k][p]; ok {
				w(" %s |", ratio(v, r.Throughput["bridge"][p]))
			} else {
				w(" n/a |")
			}
		}
		if ceilings {
			ceil := r.ceilingOf(k)
			if k == "bridge" || k == kindFloor || ceil == 0 {
				w(" |%s\n", strings.Repeat(" |", len(o.Parallelism)))
				continue
			}
			w(" %.2f /s |", ceil)
			for _, p := range o.Parallelism {
				if v, ok := r.Throughput[k][p]; ok {
					w(" %.2f |", v/ceil)
				} else {
					w(" |")
				}
			}
		}
		w("\n")
	}
	for i, k := range kinds {
		if msg, ok := r.ThroughputErrors[k]; ok {
			w("\n**%s failed under parallel lifecycles** (its cells from there on are empty): %s\n", labels[i], strings.ReplaceAll(msg, "\n", " "))
		}
	}
	if br, cn := r.CPU["bridge"], r.CPU["cniplug"]; br != nil && cn != nil && br.Lifecycles > 0 && cn.Lifecycles > 0 {
		w("\nCPU per lifecycle over these runs (the whole machine, from /proc/stat, background removals included): "+
			"Docker bridge **%s**, cniplug **%s**; of cniplug's, **%s** in cniplug and the CNI plugins and commands it ran "+
			"(its own CPU time and its children's).\n",
			ms(br.Machine/float64(br.Lifecycles)), ms(cn.Machine/float64(cn.Lifecycles)), ms(cn.Plugin/float64(cn.Lifecycles)))
	}
	r.mdCPUSplit(w, kinds, labels)
	r.mdCeiling(w)
}

// mdCPUSplit is the CPU per lifecycle of the throughput runs by process group, per contender.
func (r *results) mdCPUSplit(w printf, kinds, labels []string) {
	any := false
	for _, k := range kinds {
		any = any || (r.CPU[k] != nil && r.CPU[k].GroupLifecycles > 0)
	}
	if !any {
		return
	}
	w("\n#### CPU per lifecycle by process group (throughput runs, all parallelisms)\n\n| | machine |")
	for _, g := range cpuGroups {
		w(" %s |", g.head)
	}
	w("\n|---|---%s|\n", strings.Repeat("|---", len(cpuGroups)))
	for i, k := range kinds {
		c := r.CPU[k]
		if c == nil || c.GroupLifecycles == 0 {
			continue
		}
		w("| %s | %s |", labels[i], ms(c.Machine/float64(c.Lifecycles)))
		for _, g := range cpuGroups {
			if g.group == groupFirewall {
				w(" %s |", ms(c.firewall()))
			} else {
				w(" %s |", ms(c.perLifecycle(g.group)))
			}
		}
		w("\n")
	}
	w("\nThe iptables/nft execs by who ran them, per lifecycle:")
	var parts []string
	for i, k := range kinds {
		c := r.CPU[k]
		if c == nil || c.GroupLifecycles == 0 {
			continue
		}
		var by []string
		for _, parent := range []string{groupCniplug, groupCNI, groupDockerd, groupContainerd, groupBench, groupOther} {
			if v := c.perLifecycle(firewallGroup(parent)); v > 0 {
				by = append(by, fmt.Sprintf("%s %s", parent, ms(v)))
			}
		}
		if len(by) == 0 {
			by = []string{"none"}
		}
		parts = append(parts, fmt.Sprintf("%s: %s", labels[i], strings.Join(by, ", ")))
	}
	w(" %s.\n", strings.Join(parts, "; "))
	w("\nHow: every process's own user+system time, from /proc/<pid>/stat for the processes alive at either end of a cell " +
		"and from the kernel's taskstats exit records (one per exiting thread, with its comm and parent) for those that exited in it, " +
		"attributed by ancestry: dockerd's children count as dockerd's, containerd's and the shims' (reparented to init) and runc's as containerd's, " +
		"the processes cniplug ran and theirs as the CNI plugins', except that any process named iptables*, ip6tables* or nft* counts as a firewall exec. " +
		"/proc alone could not tell these apart: a process that exits is only in its parent's cutime/cstime, so the iptables a CNI plugin runs " +
		"would land in the plugin's. \"not in processes\" is the machine's busy time (/proc/stat) minus all groups: interrupts, softirqs and rounding.\n")
}

// mdCeiling is the CPU of each conflist's raw libcni ADD+DEL and the ceilings they give.
func (r *results) mdCeiling(w printf) {
	br := r.CPU["bridge"]
	if r.Chains == nil || br == nil || br.Lifecycles == 0 {
		return
	}
	brCPU := br.Machine / float64(br.Lifecycles)
	w("\n#### The ceiling the chain allows\n\nceiling = cores / (CPU per lifecycle on Docker's bridge + CPU of the chain's plugins per ADD+DEL), " +
		"nothing of cniplug's: the throughput cniplug would reach if it cost nothing beyond Docker's own lifecycle and the CNI plugins " +
		"(a conservative one: Docker's bridge's own veth and address work is counted next to the bridge plugin's, so a kind may exceed it). " +
		"The plugins' CPU is getrusage(RUSAGE_CHILDREN) over raw libcni ADD+DEL in the bench process (the plugins and the commands they ran), libcni's own RUSAGE_SELF.\n\n")
	w("| conflist | iterations | plugins' CPU per ADD+DEL | libcni's own | wall per ADD+DEL | ceiling (%s cores, bridge %s) |\n|---|---|---|---|---|---|\n", r.Host["cpus"], ms(brCPU))
	cores, _ := strconv.Atoi(r.Host["cpus"])
	for _, c := range []struct{ name, label string }{{chainMain, "main (as above)"}, {chainNoMasq, "without ipMasq"}, {chainNft, "ipMasq on nftables"}} {
		if ch := r.Chains[c.name]; ch != nil {
			w("| %s | %d | %s | %s | %s | %.2f /s |\n", c.label, ch.Iterations, ms(ch.Plugins), ms(ch.Libcni), ms(ch.Wall), ceiling(cores, brCPU, ch.Plugins))
		}
	}
}
