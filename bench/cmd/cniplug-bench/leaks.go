package main

import (
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// hostState is what the benchmark could leak on the host.
type hostState map[string]bool

func snapshot() (hostState, error) {
	s := hostState{}
	add := func(kind string, items []string) {
		for _, i := range items {
			if i = strings.TrimSpace(i); i != "" {
				s[kind+" "+i] = true
			}
		}
	}
	links, err := run("ip", "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			add("link", []string{strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]})
		}
	}
	ns, _ := filepath.Glob("/run/netns/*")
	add("netns", ns)
	cache, _ := filepath.Glob("/var/lib/cni/*/*")
	add("file", cache)
	for _, table := range []string{"nat", "filter", "mangle"} {
		out, err := run("iptables-save", "-t", table)
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") || strings.HasPrefix(l, "*") || l == "COMMIT" {
				continue
			}
			if strings.HasPrefix(l, ":") {
				l = strings.Fields(l)[0] // drop packet counters
			}
			add("iptables -t "+table, []string{l})
		}
	}
	cts, err := docker("ps", "-aq", "--no-trunc")
	if err != nil {
		return nil, err
	}
	add("container", strings.Fields(cts))
	nets, err := docker("network", "ls", "-q", "--no-trunc")
	if err != nil {
		return nil, err
	}
	add("docker network", strings.Fields(nets))
	return s, nil
}

// leaks lists what exists now that did not before.
func leaks(before hostState) ([]string, error) {
	var out []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		after, err := snapshot()
		if err != nil {
			return nil, err
		}
		out = out[:0]
		for k := range after {
			if !before[k] {
				out = append(out, k)
			}
		}
		if len(out) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond) // veth teardown is asynchronous in the kernel
	}
	sort.Strings(out)
	return out, nil
}
