package hostports

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/cniplug/cniplug/iptcmd"
)

// localnetComment marks the guards; with it they are found again after a restart, whichever cniplug added them.
const localnetComment = "CNIPLUG route_localnet guard"

// localnetGuard is the rule that keeps route_localnet safe on an interface: with route_localnet=1 the kernel
// delivers packets to 127.0.0.0/8 that arrive on it, so a container with NET_RAW could reach the host's
// localhost-only services (CVE-2020-8558). Only replies and DNATed connections pass, as in kube-proxy's and
// Docker's rules for the same case.
func localnetGuard(ifname string) []string {
	return []string{"-d", "127.0.0.0/8", "-i", ifname, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
		"-m", "comment", "--comment", localnetComment, "-j", "DROP"}
}

// guards returns the route_localnet guards in the ruleset by the interface each guards.
func guards(rs iptcmd.Ruleset) map[string]string {
	out := map[string]string{}
	for _, r := range rs.Rules(tableFilt, "INPUT") {
		if strings.Contains(r, localnetComment) {
			if ifname := fieldAfter(r, "-i"); ifname != "" {
				out[ifname] = r
			}
		}
	}
	return out
}

// guardLocalnet adds the guard of the interface that routes to the container, if it has none, and names that
// interface: route_localnet is to be set on it once the guard is in (setLocalnet), so it is never set
// unguarded. It lets packets from 127.0.0.0/8, DNATed in OUTPUT, leave towards the container (as the portmap
// plugin does); without it the kernel drops them as martians. "" means there is no route to the container
// from here: nothing to let out, and localhost clients just fail.
func guardLocalnet(b *iptcmd.Batch, rs iptcmd.Ruleset, containerIP net.IP) string {
	ifname, ok := linkTowards(containerIP)
	if !ok {
		return ""
	}
	if _, guarded := guards(rs)[ifname]; !guarded {
		b.Insert(tableFilt, "INPUT", localnetGuard(ifname)...)
	}
	return ifname
}

// releaseLocalnet removes the guard of every interface that no cniplug DNAT targets any more once the chains
// in removing are gone (the last published port behind it went), or that is gone, and names those interfaces:
// their route_localnet is to be reset. It reads the kernel's rules, not cniplug's memory, so it is right after
// a restart and with several cniplug instances on the host.
func releaseLocalnet(b *iptcmd.Batch, rs iptcmd.Ruleset, removing map[string]bool) []string {
	needed := map[string]bool{}
	for _, target := range dnatTargets(rs, removing) {
		if ifname, ok := linkTowards(target); ok {
			needed[ifname] = true
		}
	}
	var out []string
	for ifname, rule := range guards(rs) {
		if needed[ifname] {
			continue
		}
		b.Delete(tableFilt, rule)
		out = append(out, ifname)
	}
	return out
}

// setLocalnet sets or resets route_localnet on the interface; an interface that is gone needs no reset.
func (p *Programmer) setLocalnet(ifname string, on bool) error {
	path := p.procSys + "/net/ipv4/conf/" + ifname + "/route_localnet"
	if on {
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("setting route_localnet on %s for localhost clients of published ports: %w", ifname, err)
		}
		return nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil
	}
	if err := os.WriteFile(path, []byte("0"), 0o644); err != nil {
		return fmt.Errorf("resetting route_localnet on %s: %w", ifname, err)
	}
	return nil
}

// dnatTargets returns the IPv4 addresses cniplug's DNAT rules (its CNIPLUG-DN-* chains, but those in skip)
// send connections to.
func dnatTargets(rs iptcmd.Ruleset, skip map[string]bool) []net.IP {
	var out []net.IP
	for _, chain := range rs.Chains(tableNAT, "CNIPLUG-DN-") {
		if skip[chain] {
			continue
		}
		for _, line := range rs.Rules(tableNAT, chain) {
			host, _, err := net.SplitHostPort(fieldAfter(line, "--to-destination"))
			if ip := net.ParseIP(host); err == nil && ip != nil && ip.To4() != nil {
				out = append(out, ip)
			}
		}
	}
	return out
}

// fieldAfter returns the word after flag in an iptables rule, or "".
func fieldAfter(rule, flag string) string {
	fields := strings.Fields(rule)
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == flag {
			return strings.Trim(fields[i+1], `"`)
		}
	}
	return ""
}

// linkTowards names the interface the host routes ip through.
func linkTowards(ip net.IP) (string, bool) {
	routes, err := netlink.RouteGet(ip)
	if err != nil || len(routes) == 0 {
		return "", false
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", false
	}
	return l.Attrs().Name, true
}
