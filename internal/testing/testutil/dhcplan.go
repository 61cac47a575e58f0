package testutil

import (
	"bytes"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// DHCPLAN is a LAN with a DHCP server on it, for tests of the dhcp IPAM plugin. The LAN is a Linux bridge in
// the caller's network namespace (Bridge: usable as a macvlan master, or as the bridge plugin's bridge); one
// of its ports is a veth whose peer sits in a namespace of its own (ServerNS, pinned under /run/netns),
// where Debian's dnsmasq serves DHCP with a lease file and a log the test reads. Everything is removed again
// at the end of the test, also when it fails.
type DHCPLAN struct {
	Bridge   string     // LAN bridge in the caller's netns
	Port     string     // the bridge's port towards the server (veth, caller's netns)
	ServerNS string     // name of the server's netns (/run/netns/<ServerNS>)
	ServerIf string     // the server's link in ServerNS
	Subnet   *net.IPNet // the LAN's subnet
	ServerIP net.IP     // dnsmasq's address (also the router it hands out)

	leaseFile string
	logFile   string
	sniffer   *dhcpSniffer
}

// DHCPLANOptions tunes the DHCP server.
type DHCPLANOptions struct {
	// LeaseTime is the lease dnsmasq hands out; dnsmasq refuses less than two minutes (default 2m).
	LeaseTime time.Duration
	// T1 and T2, when set, override the renewal (option 58) and rebinding (option 59) times dnsmasq sends,
	// which otherwise are half and 7/8 of the lease time. They let a test see a renewal within seconds.
	T1, T2 time.Duration
	// Subnet is the LAN's IPv4 /24; default a random 10.200-250.x.0/24 (the LAN lives in the caller's netns
	// and a netns of its own, so it cannot clash with the host's).
	Subnet *net.IPNet
	// Pool is how many addresses dnsmasq hands out, from .10 on; default 191 (.10-.200).
	Pool int
}

// RequireDnsmasq skips the test when dnsmasq is not installed and returns its path.
func RequireDnsmasq(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("dnsmasq")
	if err != nil {
		for _, c := range []string{"/usr/sbin/dnsmasq", "/sbin/dnsmasq"} {
			if _, err := os.Stat(c); err == nil {
				return c
			}
		}
		t.Skip("skipping: dnsmasq not found (apt-get install -y dnsmasq-base)")
	}
	return p
}

// NewDHCPLAN creates the LAN and starts dnsmasq on it. The calling goroutine must stay in the netns it is in
// (NewNS locks it there) for the rest of the test: the bridge is created in it.
func NewDHCPLAN(t testing.TB, opts DHCPLANOptions) *DHCPLAN {
	t.Helper()
	RequireRoot(t)
	dnsmasq := RequireDnsmasq(t)
	opts = opts.withDefaults(t)
	sfx := UniqueName("")
	dir := t.TempDir()
	lan := &DHCPLAN{
		Bridge:    "lan" + sfx,
		Port:      "lup" + sfx,
		ServerIf:  "lsv" + sfx,
		ServerNS:  "dhcplan-" + sfx, // not "cniplug-...": nothing of cniplug's may take it for its own
		Subnet:    opts.Subnet,
		leaseFile: filepath.Join(dir, "dnsmasq.leases"),
		logFile:   filepath.Join(dir, "dnsmasq.log"),
	}
	lan.ServerIP = lan.ipAt(1)
	lan.createBridge(t)
	lan.createServerNS(t)
	// The server's end of the veth.
	srvNS, err := netns.GetFromName(lan.ServerNS)
	Must(t, err)
	defer srvNS.Close()
	peer, err := netlink.LinkByName(lan.ServerIf)
	Must(t, err)
	Must(t, netlink.LinkSetNsFd(peer, int(srvNS)))
	lan.startServer(t, dnsmasq, opts, srvNS)
	return lan
}

// withDefaults fills in the options left zero, and fails the test on a lease time dnsmasq refuses.
func (opts DHCPLANOptions) withDefaults(t testing.TB) DHCPLANOptions {
	t.Helper()
	if opts.LeaseTime == 0 {
		opts.LeaseTime = 2 * time.Minute
	}
	if opts.LeaseTime < 2*time.Minute {
		t.Fatalf("dnsmasq's minimum lease time is 2m, not %s: shorten T1/T2 instead", opts.LeaseTime)
	}
	if opts.Pool <= 0 || opts.Pool > 191 {
		opts.Pool = 191
	}
	if opts.Subnet == nil {
		_, opts.Subnet, _ = net.ParseCIDR(fmt.Sprintf("10.%d.%d.0/24", 200+mrand.IntN(51), mrand.IntN(256)))
	}
	return opts
}

// ipAt is the LAN's address ending in last.
func (lan *DHCPLAN) ipAt(last byte) net.IP {
	base := lan.Subnet.IP.To4()
	return net.IPv4(base[0], base[1], base[2], last)
}

// createBridge makes the LAN: a bridge and its port towards the server, in the caller's netns.
func (lan *DHCPLAN) createBridge(t testing.TB) {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: lan.Bridge}}
	Must(t, netlink.LinkAdd(br))
	t.Cleanup(func() { delLink(t, lan.Bridge) })
	brl, err := netlink.LinkByName(lan.Bridge)
	Must(t, err)
	Must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: lan.Port, MasterIndex: brl.Attrs().Index}, PeerName: lan.ServerIf}))
	t.Cleanup(func() { delLink(t, lan.Port) })
	for _, name := range []string{lan.Bridge, lan.Port} {
		l, err := netlink.LinkByName(name)
		Must(t, err)
		Must(t, netlink.LinkSetUp(l))
	}
}

// createServerNS makes the server's netns, pinned like `ip netns add` does.
func (lan *DHCPLAN) createServerNS(t testing.TB) {
	t.Helper()
	Run(t, "ip", "netns", "add", lan.ServerNS)
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join("/run/netns", lan.ServerNS)); errors.Is(err, os.ErrNotExist) {
			t.Logf("the LAN server's netns %s was already gone (removed by another process?)", lan.ServerNS)
			return
		}
		if out, err := exec.Command("ip", "netns", "del", lan.ServerNS).CombinedOutput(); err != nil {
			t.Errorf("removing the LAN server's netns %s: %v: %s", lan.ServerNS, err, out)
		}
	})
}

// dnsmasqArgs is dnsmasq's command line for the LAN: DHCP only, in the foreground, logging to the test's files.
func (lan *DHCPLAN) dnsmasqArgs(opts DHCPLANOptions) []string {
	args := []string{
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root", "--group=root",
		"--pid-file=", "--interface=" + lan.ServerIf, "--bind-interfaces", "--dhcp-authoritative", "--no-ping",
		"--log-dhcp", "--log-facility=" + lan.logFile, "--dhcp-leasefile=" + lan.leaseFile,
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,%ds", lan.ipAt(10), lan.ipAt(byte(10+opts.Pool-1)), int(opts.LeaseTime.Seconds())),
		"--dhcp-option=option:router," + lan.ServerIP.String(),
	}
	if opts.T1 > 0 {
		args = append(args, fmt.Sprintf("--dhcp-option=58,%d", int(opts.T1.Seconds())))
	}
	if opts.T2 > 0 {
		args = append(args, fmt.Sprintf("--dhcp-option=59,%d", int(opts.T2.Seconds())))
	}
	return args
}

// startServer configures the server's link, starts the sniffer and dnsmasq in the server's netns and waits
// until dnsmasq serves.
func (lan *DHCPLAN) startServer(t testing.TB, dnsmasq string, opts DHCPLANOptions, srvNS netns.NsHandle) {
	t.Helper()
	cmd := exec.Command(dnsmasq, lan.dnsmasqArgs(opts)...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	var startErr error
	InNetNS(t, srvNS, func() {
		err := lan.configureServerLink(opts.Subnet.Mask)
		if err == nil {
			lan.sniffer, err = startDHCPSniffer(lan.ServerIf)
		}
		if err == nil {
			err = cmd.Start() // forked from this thread: dnsmasq runs in the server's netns
		}
		startErr = err
	})
	if lan.sniffer != nil {
		t.Cleanup(lan.sniffer.stop)
	}
	if startErr != nil {
		t.Fatalf("starting the LAN's DHCP server: %v", startErr)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() { stopProcess(t, "dnsmasq", cmd, waited, &stderr) })
	// dnsmasq logs "DHCP, IP range ..." once it serves.
	if _, err := lan.waitLog(regexp.MustCompile(`DHCP, IP range`), 10*time.Second, waited); err != nil {
		t.Fatalf("dnsmasq did not start: %v\n%s\n%s", err, stderr.String(), lan.Log())
	}
}

// configureServerLink brings up loopback and the server's link with its address; it runs in the server's netns.
func (lan *DHCPLAN) configureServerLink(mask net.IPMask) error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	var l netlink.Link
	if err == nil {
		l, err = netlink.LinkByName(lan.ServerIf)
	}
	if err == nil {
		err = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: lan.ServerIP, Mask: mask}})
	}
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	return err
}

// stopProcess ends a process a helper started: SIGTERM, then SIGKILL after 5s.
func stopProcess(t testing.TB, what string, cmd *exec.Cmd, waited chan error, out fmt.Stringer) {
	select {
	case <-waited:
		t.Logf("%s had already exited: %s", what, out)
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-waited
		t.Errorf("%s did not stop on SIGTERM and was killed", what)
	}
}

// delLink removes a LAN link if it is still there. The server port's veth also goes away on its own when the
// server's netns is deleted (cleanups run in reverse: the netns first), which the kernel does asynchronously,
// so the link may vanish between the lookup and the delete: ENODEV is not an error.
func delLink(t testing.TB, name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
			t.Errorf("deleting LAN link %s: %v", name, err)
		}
	}
}

// Log returns dnsmasq's log so far.
func (l *DHCPLAN) Log() string {
	b, _ := os.ReadFile(l.logFile)
	return string(b)
}

// LogLines returns the lines of dnsmasq's log that match re.
func (l *DHCPLAN) LogLines(re *regexp.Regexp) []string {
	var out []string
	for _, line := range strings.Split(l.Log(), "\n") {
		if re.MatchString(line) {
			out = append(out, line)
		}
	}
	return out
}

// WaitLog waits until a line of dnsmasq's log matches re and returns the matching lines.
func (l *DHCPLAN) WaitLog(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	lines, err := l.waitLog(re, timeout, nil)
	if err != nil {
		t.Fatalf("%v; dnsmasq log:\n%s", err, l.Log())
	}
	return lines
}

func (l *DHCPLAN) waitLog(re *regexp.Regexp, timeout time.Duration, exited chan error) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if lines := l.LogLines(re); len(lines) > 0 {
			return lines, nil
		}
		if exited != nil {
			select {
			case err := <-exited:
				exited <- err
				return nil, fmt.Errorf("exited: %v", err)
			default:
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no dnsmasq log line matching %q within %s", re, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Wire returns the DHCP messages seen so far on the server's link, of the given type ("" for all), in order.
func (l *DHCPLAN) Wire(typ string) []DHCPPacket {
	var out []DHCPPacket
	for _, p := range l.sniffer.packets() {
		if typ == "" || p.Type == typ {
			out = append(out, p)
		}
	}
	return out
}

// DHCPLease is one line of dnsmasq's lease file.
type DHCPLease struct {
	Expiry   time.Time
	MAC      string
	IP       net.IP
	ClientID string // decoded when printable (the CNI dhcp plugin's "<containerID>/<network>/<ifname>"), else hex
	Hostname string // the client's host name (option 12), "" when it sent none
	Raw      string
}

// Leases returns the leases in dnsmasq's lease file.
func (l *DHCPLAN) Leases(t testing.TB) []DHCPLease {
	t.Helper()
	b, err := os.ReadFile(l.leaseFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	Must(t, err)
	var out []DHCPLease
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		secs, _ := strconv.ParseInt(f[0], 10, 64)
		host := f[3]
		if host == "*" {
			host = ""
		}
		out = append(out, DHCPLease{Expiry: time.Unix(secs, 0), MAC: f[1], IP: net.ParseIP(f[2]), Hostname: host, ClientID: decodeClientID(f[4]), Raw: line})
	}
	return out
}

// LeaseFor returns the lease of ip, if dnsmasq has one.
func (l *DHCPLAN) LeaseFor(t testing.TB, ip net.IP) (DHCPLease, bool) {
	t.Helper()
	for _, ls := range l.Leases(t) {
		if ls.IP.Equal(ip) {
			return ls, true
		}
	}
	return DHCPLease{}, false
}

// decodeClientID turns dnsmasq's colon-separated hex client-id into text when it is printable (the CNI dhcp
// plugin sends a type byte 0 followed by text).
func decodeClientID(s string) string {
	if s == "*" {
		return ""
	}
	var b []byte
	for _, h := range strings.Split(s, ":") {
		v, err := strconv.ParseUint(h, 16, 8)
		if err != nil {
			return s
		}
		b = append(b, byte(v))
	}
	if len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return s
		}
	}
	return string(b)
}
