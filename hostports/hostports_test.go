package hostports

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/vishvananda/netns"
)

func TestParseDockerPortmap(t *testing.T) {
	decode := func(s string) any {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	got, err := ParseDockerPortmap(decode(`[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
		{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":0,"HostPortEnd":0},
		{"Proto":132,"Port":9,"HostIP":"::1","HostPort":9000,"HostPortEnd":9010}]`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Binding{
		{Proto: 6, Port: 80, HostPort: 8080, HostPortEnd: 8080},
		{Proto: 17, Port: 53, HostIP: "127.0.0.1"},
		{Proto: 132, Port: 9, HostIP: "::1", HostPort: 9000, HostPortEnd: 9010},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if b, err := ParseDockerPortmap(nil); err != nil || b != nil {
		t.Errorf("nil option: %v %v", b, err)
	}
	for _, bad := range []string{
		`{"Proto":6}`,
		`[{"Proto":1,"Port":80}]`,
		`[{"Proto":6,"Port":0,"HostPort":1}]`,
		`[{"Proto":6,"Port":80,"HostPort":90,"HostPortEnd":80}]`,
		`[{"Proto":6,"Port":80,"HostPort":0,"HostPortEnd":80}]`,
		`[{"Proto":6,"Port":70000}]`,
		`[{"Proto":6,"Port":80,"HostIP":"not-an-ip"}]`,
		`[{"Proto":6,"Port":"80"}]`,
	} {
		if _, err := ParseDockerPortmap(decode(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func FuzzParseDockerPortmap(f *testing.F) {
	f.Add([]byte(`[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]`))
	f.Add([]byte(`[{"Proto":17,"Port":53,"HostIP":"::1","HostPort":0}]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if json.Unmarshal(data, &v) != nil {
			return
		}
		bs, err := ParseDockerPortmap(v)
		if err != nil {
			return
		}
		if len(bs) > MaxMappings {
			t.Fatalf("%d bindings accepted", len(bs))
		}
		for _, b := range bs {
			if protoNames[b.Proto] == "" || protoNames[b.Proto] == "icmp" || b.Port == 0 {
				t.Fatalf("invalid binding accepted: %+v", b)
			}
			if b.HostPortEnd != 0 && (b.HostPortEnd < b.HostPort || b.HostPort == 0) {
				t.Fatalf("invalid range accepted: %+v", b)
			}
			if b.HostIP != "" && net.ParseIP(b.HostIP) == nil {
				t.Fatalf("invalid host IP accepted: %+v", b)
			}
		}
	})
}

func TestOverlap(t *testing.T) {
	m := func(proto, ip string, port int) Mapping { return Mapping{Proto: proto, HostIP: ip, HostPort: port} }
	cases := []struct {
		a, b Mapping
		want bool
	}{
		{m("tcp", "", 80), m("tcp", "10.0.0.1", 80), true},
		{m("tcp", "0.0.0.0", 80), m("tcp", "10.0.0.1", 80), true},
		{m("tcp", "10.0.0.2", 80), m("tcp", "10.0.0.1", 80), false},
		{m("tcp", "", 80), m("udp", "", 80), false},
		{m("tcp", "", 80), m("tcp", "", 81), false},
	}
	for _, c := range cases {
		if got := Overlap(c.a, c.b); got != c.want {
			t.Errorf("Overlap(%v, %v) = %v", c.a, c.b, got)
		}
	}
}

func TestResolve(t *testing.T) {
	testutil.NewNS(t) // the ports and addresses in use are the fresh namespace's, not the host's
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	hp := uint16(held.Addr().(*net.TCPAddr).Port)
	_, err = Resolve([]Binding{{Proto: 6, Port: 80, HostIP: "127.0.0.1", HostPort: hp}}, nil)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("host port %d/tcp is already in use", hp)) {
		t.Errorf("held port: %v", err)
	}
	// A range skips the held port; a port another container publishes is skipped too.
	other := func(m Mapping) bool { return m.HostPort == int(hp)+1 }
	ms, err := Resolve([]Binding{{Proto: 6, Port: 80, HostIP: "127.0.0.1", HostPort: hp, HostPortEnd: hp + 5}}, other)
	if err != nil {
		t.Fatal(err)
	}
	if ms[0].HostPort <= int(hp)+1 || ms[0].HostPort > int(hp)+5 {
		t.Errorf("range resolved to %d (held %d, published %d)", ms[0].HostPort, hp, hp+1)
	}
	ms, err = Resolve([]Binding{{Proto: 17, Port: 53}, {Proto: 6, Port: 80}}, nil)
	if err != nil || ms[0].HostPort == 0 || ms[1].HostPort == 0 {
		t.Errorf("ephemeral: %v %v", ms, err)
	}
	if _, err := Resolve([]Binding{{Proto: 6, Port: 80, HostIP: "192.0.2.77", HostPort: 8080}}, nil); err == nil ||
		!strings.Contains(err.Error(), "not an address of this host") {
		t.Errorf("foreign host IP: %v", err)
	}
}

// TestApplyRemove programs real rules with both iptables backends in a pair of namespaces standing in for
// the host and a container, checks that TCP to the published port reaches the container from the "host"
// itself (OUTPUT DNAT) and from a third namespace (PREROUTING + FORWARD with a DROP policy), and that Remove
// leaves no rule or chain, also when repeated.
func TestApplyRemove(t *testing.T) {
	testutil.RequireRoot(t)
	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			v4, v6 := "iptables-"+backend, "ip6tables-"+backend
			if _, err := exec.LookPath(v4); err != nil {
				t.Skipf("skipping: %s not installed", v4)
			}
			host, ctr, client := nsName("hph"), nsName("hpc"), nsName("hpx")
			for _, n := range []string{host, ctr, client} {
				testutil.Run(t, "ip", "netns", "add", n)
				t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
			}
			sh := func(ns, cmd string) string { return testutil.Run(t, "ip", "netns", "exec", ns, "sh", "-c", cmd) }
			testutil.Run(t, "ip", "link", "add", "hpveth0", "netns", host, "type", "veth", "peer", "name", "eth0", "netns", ctr)
			testutil.Run(t, "ip", "link", "add", "hpveth1", "netns", host, "type", "veth", "peer", "name", "eth0", "netns", client)
			sh(host, "ip link set lo up; ip addr add 10.99.0.1/24 dev hpveth0; ip link set hpveth0 up; ip addr add 10.98.0.1/24 dev hpveth1; ip link set hpveth1 up; sysctl -qw net.ipv4.ip_forward=1")
			sh(host, v4+" -P FORWARD DROP")
			sh(ctr, "ip link set lo up; ip addr add 10.99.0.2/24 dev eth0; ip link set eth0 up; ip route add default via 10.99.0.1")
			sh(client, "ip link set lo up; ip addr add 10.98.0.2/24 dev eth0; ip link set eth0 up; ip route add default via 10.98.0.1")

			hostNS, err := netns.GetFromName(host)
			testutil.Must(t, err)
			defer hostNS.Close()
			ctrNS, err := netns.GetFromName(ctr)
			testutil.Must(t, err)
			defer ctrNS.Close()
			clientNS, err := netns.GetFromName(client)
			testutil.Must(t, err)
			defer clientNS.Close()

			// The "container" serves its name.
			var l net.Listener
			testutil.InNetNS(t, ctrNS, func() { l, err = net.Listen("tcp", "10.99.0.2:80") })
			testutil.Must(t, err)
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					fmt.Fprintln(c, "container")
					c.Close()
				}
			}()

			p, err := New(v4, v6)
			testutil.Must(t, err)
			rec := Record{ID: "0123456789abcdef", ContainerIPv4: "10.99.0.2/24", DNAT: true,
				Mappings: []Mapping{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}, {Proto: "udp", HostIP: "10.98.0.1", HostPort: 5353, ContainerPort: 53}}}
			testutil.InNetNS(t, hostNS, func() {
				p.procSys = "/proc/sys"
				err = p.Apply(context.Background(), rec)
				if err == nil {
					err = p.Apply(context.Background(), rec) // idempotent
				}
			})
			testutil.Must(t, err)
			// Both backends must print the one layout the golden file shows.
			testutil.Golden(t, "testdata/published-ports.golden", ruleLayout(sh, host, v4))
			rules := sh(host, v4+"-save")
			for _, want := range []string{"-j DNAT --to-destination 10.99.0.2:80", "-A CNIPLUG-FORWARD", "-A FORWARD -m comment --comment \"cniplug host ports\" -j CNIPLUG-FORWARD", "MASQUERADE"} {
				if !strings.Contains(rules, want) {
					t.Errorf("rules lack %q:\n%s", want, rules)
				}
			}
			if n := strings.Count(rules, "-j DNAT"); n != 2 {
				t.Errorf("%d DNAT rules after applying twice, want 2:\n%s", n, rules)
			}
			dial := func(ns netns.NsHandle, addr string) (string, error) {
				var line string
				var err error
				testutil.InNetNS(t, ns, func() {
					var c net.Conn
					c, err = net.DialTimeout("tcp", addr, 2*time.Second)
					if err != nil {
						return
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(2 * time.Second))
					line, err = bufio.NewReader(c).ReadString('\n')
					if errors.Is(err, io.EOF) {
						err = nil
					}
				})
				return strings.TrimSpace(line), err
			}
			for _, tc := range []struct {
				name string
				ns   netns.NsHandle
				addr string
			}{{"other host", clientNS, "10.98.0.1:8080"}, {"host itself", hostNS, "10.98.0.1:8080"}, {"host localhost", hostNS, "127.0.0.1:8080"}} {
				if got, err := dial(tc.ns, tc.addr); err != nil || got != "container" {
					t.Errorf("%s -> %s: %q, %v", tc.name, tc.addr, got, err)
				}
			}

			// route_localnet is on for localhost clients, and guarded: the container, with NET_ADMIN, routes
			// 127.0.0.1 to the host and must not reach a service listening on the host's localhost only.
			localnet := func() string {
				return strings.TrimSpace(sh(host, "cat /proc/sys/net/ipv4/conf/hpveth0/route_localnet"))
			}
			if v := localnet(); v != "1" {
				t.Errorf("route_localnet on the container's link is %s while a port is published, want 1", v)
			}
			// A UDP service on the host's localhost only. What the container sends to it must never arrive (the
			// container cannot take replies from 127.0.0.1 through its stack, but a raw socket could).
			var private net.PacketConn
			testutil.InNetNS(t, hostNS, func() { private, err = net.ListenPacket("udp", "127.0.0.1:9099") })
			testutil.Must(t, err)
			defer private.Close()
			sh(ctr, "ip route del local 127.0.0.0/8 dev lo table local; ip route del local 127.0.0.1 dev lo table local; "+
				"sysctl -qw net.ipv4.conf.eth0.route_localnet=1; ip route add 127.0.0.1/32 via 10.99.0.1 dev eth0")
			reachesPrivate := func() bool {
				testutil.InNetNS(t, ctrNS, func() {
					var c net.Conn
					if c, err = net.Dial("udp", "127.0.0.1:9099"); err == nil {
						_, err = c.Write([]byte("from the container"))
						c.Close()
					}
				})
				testutil.Must(t, err)
				_ = private.SetReadDeadline(time.Now().Add(time.Second))
				_, _, rerr := private.ReadFrom(make([]byte, 64))
				return rerr == nil
			}
			if reachesPrivate() {
				t.Errorf("the container reached the host's localhost-only service")
			}
			// The same without the guard does reach it: the check above can fail.
			sh(host, v4+" -D INPUT 1")
			if !reachesPrivate() {
				t.Errorf("without the guard the container should reach the service here: the check proves nothing")
			}
			testutil.Run(t, "ip", append([]string{"netns", "exec", host, v4, "-I", "INPUT", "1"}, localnetGuard("hpveth0")...)...)

			testutil.InNetNS(t, hostNS, func() {
				err = p.Remove(context.Background(), rec)
				if err == nil {
					err = p.Remove(context.Background(), rec)
				}
			})
			testutil.Must(t, err)
			// The last published port behind the link went: route_localnet is reset, and its guard goes.
			if v := localnet(); v != "0" {
				t.Errorf("route_localnet is %s after the last published port went, want 0", v)
			}
			if rules := sh(host, v4+"-save"); strings.Contains(rules, localnetComment) {
				t.Errorf("the route_localnet guard remains:\n%s", rules)
			}
			// The top-level chains stay by design; nothing of this attachment may.
			if rules := sh(host, v4+"-save"); strings.Contains(rules, "CNIPLUG-DN-") || strings.Contains(rules, "CNIPLUG-SN-") || strings.Contains(rules, "CNIPLUG-FW-") {
				t.Errorf("rules remain after Remove:\n%s", rules)
			}
			if _, err := dial(clientNS, "10.98.0.1:8080"); err == nil {
				t.Errorf("published port still reachable after Remove")
			}
		})
	}
}

func nsName(prefix string) string { return testutil.UniqueName(prefix) }

// ruleLayout is the nat and filter tables of the namespace as iptables-save prints them, without the comment
// lines (versions, dates) and packet counters that change from run to run.
func ruleLayout(sh func(ns, cmd string) string, ns, iptables string) string {
	var out []string
	for _, table := range []string{"nat", "filter"} {
		for _, line := range strings.Split(sh(ns, iptables+"-save -t "+table), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if strings.HasPrefix(line, ":") {
				line = strings.Fields(line)[0] + " " + strings.Fields(line)[1]
			}
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

// TestHungIptables: an iptables-restore that never finishes fails the one publish that ran it, within the
// command deadline, and is killed; the publishes waiting behind it go on and succeed.
func TestHungIptables(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("iptables-legacy-restore"); err != nil {
		t.Skip("skipping: iptables-legacy-restore not installed")
	}
	ns := testutil.NewNS(t)
	// Wrappers around iptables-legacy: the first restore hangs (mkdir is atomic: exactly one call wins).
	dir := t.TempDir()
	testutil.WriteFile(t, dir, "iptables-legacy-save", "#!/bin/sh\nexec iptables-legacy-save \"$@\"\n")
	testutil.WriteFile(t, dir, "iptables-legacy-restore", "#!/bin/sh\nif mkdir "+dir+"/hung 2>/dev/null; then exec sleep 3600; fi\nexec iptables-legacy-restore \"$@\"\n")
	testutil.Run(t, "chmod", "+x", dir+"/iptables-legacy-save", dir+"/iptables-legacy-restore")
	t.Cleanup(func() { testutil.KillMatching(t, "sleep 3600") })

	p, err := New(dir+"/iptables-legacy", "")
	testutil.Must(t, err)
	p.v4.Timeout = time.Second
	records := []Record{
		{ID: "a1aaaaaaaaaaa0000", ContainerIPv4: "10.77.0.2/24", DNAT: true, Mappings: []Mapping{{Proto: "tcp", HostPort: 8081, ContainerPort: 80}}},
		{ID: "a2aaaaaaaaaaa0000", ContainerIPv4: "10.77.0.3/24", DNAT: true, Mappings: []Mapping{{Proto: "tcp", HostPort: 8082, ContainerPort: 80}}},
		{ID: "a3aaaaaaaaaaa0000", ContainerIPv4: "10.77.0.4/24", DNAT: true, Mappings: []Mapping{{Proto: "tcp", HostPort: 8083, ContainerPort: 80}}},
	}
	errs := make([]error, len(records))
	start := time.Now()
	done := make(chan int)
	for i, r := range records {
		go testutil.InNetNS(t, ns, func() {
			errs[i] = p.Apply(context.Background(), r)
			done <- i
		})
	}
	for range records {
		<-done
	}
	elapsed := time.Since(start)
	failed := 0
	for i, err := range errs {
		if err == nil {
			continue
		}
		failed++
		if !strings.Contains(err.Error(), "did not finish in time") {
			t.Errorf("publish %d failed for another reason than the hung command: %v", i, err)
		}
	}
	if failed != 1 {
		t.Errorf("%d publishes failed, want exactly the one that ran the hung command: %v", failed, errs)
	}
	// One deadline for the hung command, plus the failed publish's own cleanup and the others' work.
	if elapsed > 8*time.Second {
		t.Errorf("the publishes took %s: the hung command held them longer than its deadline", elapsed)
	}
	if pids := testutil.PidsMatching("sleep 3600"); len(pids) > 0 {
		t.Errorf("the hung command was not stopped: %v", pids)
	}
	save := testutil.Run(t, "iptables-legacy-save", "-t", "nat")
	for i, r := range records {
		dn, _, _ := r.chains()
		if has := strings.Contains(save, ":"+dn); has != (errs[i] == nil) {
			t.Errorf("publish %d (error %v): its DNAT chain present = %v", i, errs[i], has)
		}
		testutil.Must(t, p.Remove(context.Background(), r))
	}
	if save := testutil.Run(t, "iptables-legacy-save"); strings.Contains(save, "CNIPLUG-DN-") || strings.Contains(save, "CNIPLUG-FW-") {
		t.Errorf("rules remain after Remove:\n%s", save)
	}
}
