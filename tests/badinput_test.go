package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/naming"
)

// pluginPost POSTs a raw body to the suite's plugin socket, as dockerd would, and returns the status and the
// answer's Err.
func pluginPost(t *testing.T, method string, body []byte) (int, string) {
	t.Helper()
	sock := env.socket
	c := http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Post("http://plugin/"+method, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", method, err)
	}
	var e struct{ Err string }
	if err := json.Unmarshal(out, &e); err != nil {
		t.Fatalf("%s: the answer is not JSON: %q", method, out)
	}
	return resp.StatusCode, e.Err
}

// networkID is a Docker network's full ID.
func networkID(t *testing.T, name string) string {
	t.Helper()
	return docker(t, "network", "inspect", "-f", "{{.Id}}", name)
}

// TestBadInput sends the plugin requests no dockerd sends, as raw JSON on its socket: each is refused with an
// error that names the field, changes nothing, and leaves the plugin answering. A container name far longer
// than CNI_ARGS should carry still gets its container networked.
func TestBadInput(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	dockerNet := createNetwork(t, n, dockerIPAM)
	nid := networkID(t, dockerNet)
	smuggled := n.Prefix + "200" // what a MAC with ;IP= would make host-local assign

	for _, tc := range []struct {
		name, method, body string
		want               []string // in Err
	}{
		{"MAC with IP=", "NetworkDriver.CreateEndpoint",
			fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q,"Interface":{"MacAddress":"02:00:00:5b:00:77;IP=%s"},"Options":{}}`, nid, naming.RandomID(), smuggled),
			[]string{`invalid MacAddress "02:00:00:5b:00:77;IP=` + smuggled + `"`, "want six hex bytes like 02:42:ac:11:00:02"}},
		{"SandboxKey of the host's netns", "NetworkDriver.Join",
			fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q,"SandboxKey":"/proc/1/ns/net","Options":{}}`, nid, naming.RandomID()),
			[]string{`invalid SandboxKey "/proc/1/ns/net"`, "/var/run/docker/netns"}},
		{"SandboxKey outside Docker's netns dir", "NetworkDriver.Join",
			fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q,"SandboxKey":"/run/netns/x","Options":{}}`, nid, naming.RandomID()),
			[]string{`invalid SandboxKey "/run/netns/x"`, "/var/run/docker/netns"}},
		{"NetworkID with a path", "NetworkDriver.CreateNetwork",
			fmt.Sprintf(`{"NetworkID":"../../../../tmp/x","Options":{"com.docker.network.generic":{"cni":%q}},"IPv4Data":[{"AddressSpace":"null","Pool":"0.0.0.0/0"}]}`, n.Name),
			[]string{`invalid NetworkID "../../../../tmp/x"`, "64 lowercase hex digits"}},
		{"oversized body", "IpamDriver.RequestPool",
			`{"Options":{"cni":"` + strings.Repeat("a", 2<<20) + `"}}`,
			[]string{"IpamDriver.RequestPool", "request body too large", "1 MiB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, errText := pluginPost(t, tc.method, []byte(tc.body))
			if status != http.StatusBadRequest {
				t.Errorf("status %d (Err %q), want 400", status, errText)
			}
			for _, w := range tc.want {
				if !strings.Contains(errText, w) {
					t.Errorf("Err %q\n does not contain %q", errText, w)
				}
			}
			if !pluginServing() {
				t.Fatal("cniplug does not answer after the request")
			}
		})
	}
	if reservedByHostLocal(n.Name, smuggled) {
		t.Errorf("host-local reserved %s, the address a MAC with ;IP= named", smuggled)
	}
	if _, err := os.Lstat("/tmp/x"); err == nil {
		t.Errorf("/tmp/x exists after a CreateNetwork for NetworkID ../../../../tmp/x")
	}

	t.Run("300-character container name", func(t *testing.T) {
		cniNet := bridgeNet(t)
		dn := createNetwork(t, cniNet, cniIPAM)
		name := testutil.UniqueName("dclong")
		name += strings.Repeat("x", 300-len(name))
		t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
		docker(t, "run", "-d", "--name", name, "--net", dn, image, "sleep", "600")
		checkEndpoint(t, name, dn, cniNet)
		// Docker 29 sends the name with RequestAddress; CNI_ARGS carried it bounded (naming.BoundName).
		if want := naming.BoundName(name); !cacheHasArg(t, cniNet.Name, "DOCKER_CONTAINER_NAME", want) && !engineIs2010(t) {
			t.Errorf("no libcni cache entry of %s has DOCKER_CONTAINER_NAME=%s", cniNet.Name, want)
		}
		if !pluginServing() {
			t.Fatal("cniplug does not answer after the container started")
		}
	})
}

// cacheHasArg reports whether one of libcni's cached ADDs on CNI network cniName had CNI_ARGS key=value.
func cacheHasArg(t *testing.T, cniName, key, value string) bool {
	t.Helper()
	for _, f := range cacheFiles(t, cniName) {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var entry struct {
			CNIArgs [][2]string `json:"cniArgs"`
		}
		if json.Unmarshal(data, &entry) != nil {
			continue
		}
		for _, kv := range entry.CNIArgs {
			if kv[0] == key && kv[1] == value {
				return true
			}
		}
	}
	return false
}
