package hostports

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// localnetComment marks the guards; with it they are found again after a restart, whichever cniplug added them.
const localnetComment = "CNIPLUG route_localnet guard"

// localnetGuard is the rule that keeps route_localnet safe on an interface: with route_localnet=1 the kernel
// delivers packets to 127.0.0.0/8 that arrive on it, so a container with NET_RAW could reach the host's
// localhost-only services (CVE-2020-8558). Only replies and DNATed connections pass, as in kube-proxy's and
// Docker's rules for the same case.
func localnetGuard(ifname string) []string {
	return []string{"-i", ifname, "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
		"-m", "comment", "--comment", localnetComment, "-j", "DROP"}
}

// enableLocalnet lets packets from 127.0.0.0/8, DNATed in OUTPUT, leave through the interface that routes to
// the container (as the portmap plugin does); without it the kernel drops them as martians. The guard goes in
// first: route_localnet is never set without it.
func (p *Programmer) enableLocalnet(containerIP net.IP) error {
	ifname, ok := linkTowards(containerIP)
	if !ok {
		return nil // no route to the container from here: nothing to let out, localhost clients just fail
	}
	rule := localnetGuard(ifname)
	exists, err := p.v4.Exists(tableFilt, "INPUT", rule...)
	if err == nil && !exists {
		err = p.v4.Insert(tableFilt, "INPUT", 1, rule...)
	}
	if err != nil {
		return fmt.Errorf("guarding route_localnet on %s: %w", ifname, err)
	}
	if err := os.WriteFile(p.localnetPath(ifname), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("setting route_localnet on %s for localhost clients of published ports: %w", ifname, err)
	}
	return nil
}

// releaseLocalnet resets route_localnet and removes the guard on every guarded interface that no cniplug DNAT
// targets any more (the last published port behind it went), or that is gone. It reads the kernel's rules, not
// cniplug's memory, so it is right after a restart and with several cniplug instances on the host.
func (p *Programmer) releaseLocalnet() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nat, err := exec.CommandContext(ctx, p.v4Path, "-w", "-t", tableNAT, "-S").Output()
	if err != nil {
		return fmt.Errorf("reading the nat table: %w", err)
	}
	needed := map[string]bool{}
	for _, target := range dnatTargets(string(nat)) {
		if ifname, ok := linkTowards(target); ok {
			needed[ifname] = true
		}
	}
	rules, err := p.v4.List(tableFilt, "INPUT")
	if err != nil {
		return fmt.Errorf("reading INPUT: %w", err)
	}
	for _, r := range rules {
		if !strings.Contains(r, localnetComment) {
			continue
		}
		ifname := fieldAfter(r, "-i")
		if ifname == "" || needed[ifname] {
			continue
		}
		if err := p.v4.DeleteIfExists(tableFilt, "INPUT", localnetGuard(ifname)...); err != nil {
			return fmt.Errorf("removing the route_localnet guard of %s: %w", ifname, err)
		}
		if _, err := os.Stat(p.localnetPath(ifname)); err == nil {
			if err := os.WriteFile(p.localnetPath(ifname), []byte("0"), 0o644); err != nil {
				return fmt.Errorf("resetting route_localnet on %s: %w", ifname, err)
			}
		}
	}
	return nil
}

func (p *Programmer) localnetPath(ifname string) string {
	return p.procSys + "/net/ipv4/conf/" + ifname + "/route_localnet"
}

// dnatTargets returns the IPv4 addresses cniplug's DNAT rules (its CNIPLUG-DN-* chains) send connections to.
func dnatTargets(save string) []net.IP {
	var out []net.IP
	for _, line := range strings.Split(save, "\n") {
		if !strings.HasPrefix(line, "-A CNIPLUG-DN-") {
			continue
		}
		host, _, err := net.SplitHostPort(fieldAfter(line, "--to-destination"))
		if ip := net.ParseIP(host); err == nil && ip != nil && ip.To4() != nil {
			out = append(out, ip)
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
