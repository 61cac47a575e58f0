package tests

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestNetworkCreateErrors: every bad `docker network create` fails with a message that names the cause, and
// leaves no Docker network and nothing on the host.
func TestNetworkCreateErrors(t *testing.T) {
	requireSuite(t)
	good := bridgeNet(t)
	broken := testutil.UniqueName("e2ebad")
	brokenFile := testutil.WriteFile(t, env.confDir, "zz-"+broken+".conflist",
		fmt.Sprintf(`{"cniVersion":"1.0.0","name":"%s","plugins":"not-a-list"}`, broken))
	t.Cleanup(func() { os.Remove(brokenFile) })
	missing := writeConflist(t, "miss", func(ipam string) string {
		return fmt.Sprintf(`{"type":"e2e-no-such-plugin","ipam":%s}`, ipam)
	})

	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"missing cni option", []string{"-d", driverName}, []string{"missing --opt cni="}},
		{"unknown CNI network", []string{"-d", driverName, "--opt", "cni=e2e-nope"},
			[]string{`no CNI network named "e2e-nope"`, good.Name}},
		{"unparsable conflist", []string{"-d", driverName, "--opt", "cni=" + broken},
			[]string{"zz-" + broken + ".conflist", "unparsable"}},
		{"missing plugin binary", []string{"-d", driverName, "--opt", "cni=" + missing.Name, "--ipam-driver", "null"},
			[]string{`"e2e-no-such-plugin" not found`, env.pluginBinDir}},
		{"unknown option", []string{"-d", driverName, "--opt", "cni=" + good.Name, "--opt", "colour=blue", "--ipam-driver", "null"},
			[]string{"unknown option(s) colour"}},
		{"path as CNI name", []string{"-d", driverName, "--opt", "cni=../../etc/passwd", "--ipam-driver", "null"},
			[]string{"invalid CNI network name"}},
		{"docker pool does not match", []string{"-d", driverName, "--opt", "cni=" + good.Name},
			[]string{"--subnet " + good.Subnet + " --gateway " + good.Gateway}},
		{"cni IPAM without cni option", []string{"-d", driverName, "--opt", "cni=" + good.Name, "--ipam-driver", driverName},
			[]string{"missing --ipam-opt cni="}},
		{"cni IPAM subnet mismatch", []string{"-d", driverName, "--opt", "cni=" + good.Name, "--ipam-driver", driverName,
			"--ipam-opt", "cni=" + good.Name, "--subnet", "10.254.254.0/24"}, []string{"--subnet " + good.Subnet}},
		{"enable_icc=false", []string{"-d", driverName, "--opt", "cni=" + good.Name, "--opt", "com.docker.network.bridge.enable_icc=false",
			"--ipam-driver", "null"}, []string{"enable_icc=false is not supported", "bridge-nf-call-iptables"}},
		{"async delete not a bool", []string{"-d", driverName, "--opt", "cni=" + good.Name, "--opt", "async-delete=soon",
			"--ipam-driver", "null"}, []string{`async-delete="soon": want true or false`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := testutil.UniqueName("dn")
			args := append(append([]string{"network", "create"}, tc.args...), name)
			out, err := dockerErr(args...)
			if err == nil {
				_, _ = dockerErr("network", "rm", name)
				t.Fatalf("docker %s succeeded, want an error", strings.Join(args, " "))
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("error does not mention %q:\n%s", w, out)
				}
			}
			if _, err := dockerErr("network", "inspect", name); err == nil {
				_, _ = dockerErr("network", "rm", name)
				t.Errorf("failed create left Docker network %s", name)
			}
		})
	}
}

// TestPluginFailures: a CNI plugin that fails or hangs during ADD makes `docker run` fail with the plugin's
// message (or the deadline) and rolls everything back, including the bridge plugin's masquerade chain and
// host-local reservation made earlier in the chain.
func TestPluginFailures(t *testing.T) {
	cases := []struct {
		plugin string
		want   string
	}{
		{"e2e-failer", "e2e-failer refuses ADD on purpose"},
		{"e2e-hanger", "did not finish within " + cniTimeout.String()},
	}
	for _, tc := range cases {
		for _, mode := range []addressing{cniIPAM, nullIPAM} {
			t.Run(tc.plugin+"/"+string(mode), func(t *testing.T) {
				requireSuite(t)
				n := bridgeNet(t, fmt.Sprintf(`{"type":"%s"}`, tc.plugin))
				net := createNetwork(t, n, mode)
				name := testutil.UniqueName("dc")
				t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
				start := time.Now()
				out, err := dockerErr("run", "-d", "--name", name, "--net", net, image, "sleep", "60")
				if err == nil {
					t.Fatalf("docker run succeeded on a network whose chain includes %s", tc.plugin)
				}
				if !strings.Contains(out, tc.want) {
					t.Errorf("docker run error does not carry %q:\n%s", tc.want, out)
				}
				// Docker's own plugin timeout is 30s; cniplug's deadline must answer well before it.
				if d := time.Since(start); d > 25*time.Second {
					t.Errorf("docker run took %s to fail", d)
				}
				docker(t, "rm", "-f", name)
			})
		}
	}
}

// TestDockerIPAMBesideCNIIPAM: Docker's IPAM and cniplug's on one CNI network hand out addresses from one
// host-local range independently (host-local continues after the last address anyone reserved, Docker's
// included): the address Docker's IPAM chooses next is one a CNI-IPAM container holds. The ADD fails, and
// the error names the attachment that holds the address and the cause; nothing is left.
func TestDockerIPAMBesideCNIIPAM(t *testing.T) {
	requireSuite(t)
	for _, tc := range []struct {
		name  string
		extra []string
	}{{"hand-over", nil}, {"direct join", []string{"--opt", "direct-join=true"}}} {
		t.Run(tc.name, func(t *testing.T) {
			n := bridgeNet(t)
			byDocker := createNetwork(t, n, dockerIPAM, tc.extra...)
			byCNI := createNetwork(t, n, cniIPAM)
			first := runContainer(t, byDocker)                           // the first address after the gateway
			second := checkEndpoint(t, runContainer(t, byCNI), byCNI, n) // host-local's next: the one after it
			name := testutil.UniqueName("dc")
			t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
			out, err := dockerErr("run", "-d", "--name", name, "--net", byDocker, image, "sleep", "600")
			if err == nil {
				t.Fatalf("a container got %s on %s although a container on %s holds it", inspectEndpoint(t, name, byDocker).IPAddress, byDocker, byCNI)
			}
			for _, want := range []string{second.IPAddress, "is held by attachment", n.Name, "Docker's IPAM (--subnet) and the CNI network's own IPAM"} {
				if !strings.Contains(out, want) {
					t.Errorf("the error lacks %q:\n%s", want, out)
				}
			}
			checkEndpoint(t, first, byDocker, n)
		})
	}
}
