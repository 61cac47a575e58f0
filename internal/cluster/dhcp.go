package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The pool of the underlay's DHCP server, as the last octet of the underlay's /24.
const (
	dhcpServer = 2
	dhcpFirst  = 200
	dhcpLast   = 250
)

// DHCPLease is one lease of the underlay's DHCP server.
type DHCPLease struct {
	MAC string
	IP  net.IP
}

// startDHCPServer runs dnsmasq on the underlay bridge, in the underlay's namespace, for a MacvlanDHCP wiring:
// one server allocating for every node, as on a LAN. The returned stop removes it and its address.
func (c *Cluster) startDHCPServer(w *Wiring) (stop func(), err error) {
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		dnsmasq = "/usr/sbin/dnsmasq"
		if _, err := os.Stat(dnsmasq); err != nil {
			return func() {}, errors.New("the DHCP wiring needs dnsmasq (apt-get install dnsmasq-base)")
		}
	}
	ul := c.Name + "-ul"
	base := net.ParseIP(c.Nodes[0].IP).To4()
	at := func(last byte) string { return fmt.Sprintf("%d.%d.%d.%d", base[0], base[1], base[2], last) }
	dir := filepath.Join(c.Dir, "dhcp-"+w.CNIName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() {}, err
	}
	w.leaseFile = filepath.Join(dir, "leases")
	addr := at(dhcpServer) + "/24"
	if out, err := exec.Command("ip", "-n", ul, "addr", "add", addr, "dev", "ulbr").CombinedOutput(); err != nil {
		return func() {}, fmt.Errorf("address for the DHCP server: %v: %s", err, out)
	}
	cmd := exec.Command("ip", "netns", "exec", ul, dnsmasq,
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root", "--group=root", "--pid-file=",
		"--interface=ulbr", "--bind-interfaces", "--dhcp-authoritative", "--no-ping", "--log-dhcp",
		"--log-facility="+filepath.Join(dir, "dnsmasq.log"), "--dhcp-leasefile="+w.leaseFile,
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,2m", at(dhcpFirst), at(dhcpLast)))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stop = func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_ = exec.Command("ip", "-n", ul, "addr", "del", addr, "dev", "ulbr").Run()
		_ = os.RemoveAll(dir)
	}
	if err := cmd.Start(); err != nil {
		stop()
		return func() {}, fmt.Errorf("starting dnsmasq: %w", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if b, _ := os.ReadFile(filepath.Join(dir, "dnsmasq.log")); bytes.Contains(b, []byte("DHCP, IP range")) {
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return func() {}, fmt.Errorf("dnsmasq did not start serving: %s", stderr.String())
		}
	}
}

// DHCPLeases lists the leases the underlay's DHCP server holds for a MacvlanDHCP wiring.
func (w *Wiring) DHCPLeases() []DHCPLease {
	b, _ := os.ReadFile(w.leaseFile)
	var out []DHCPLease
	for _, l := range strings.Split(string(b), "\n") {
		// expiry mac ip hostname client-id
		if f := strings.Fields(l); len(f) >= 3 {
			out = append(out, DHCPLease{MAC: f[1], IP: net.ParseIP(f[2])})
		}
	}
	return out
}
