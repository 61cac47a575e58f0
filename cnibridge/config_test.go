package cnibridge

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

const (
	bridgeConflist = `{"cniVersion":"1.0.0","name":"alpha","plugins":[
		{"type":"bridge","bridge":"br-alpha","ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.210.1.0/24"}]]}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`
	singleConf = `{"cniVersion":"0.4.0","name":"beta","type":"ptp","ipMasq":true,
		"ipam":{"type":"host-local","subnet":"10.210.2.0/24","gateway":"10.210.2.254"}}`
)

func TestResolveNetwork(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFile(t, dir, "10-alpha.conflist", bridgeConflist)
	testutil.WriteFile(t, dir, "20-file-name.conf", singleConf)
	testutil.WriteFile(t, dir, "30-broken.conflist", `{"name": "broken", "plugins": [`)
	testutil.WriteFile(t, dir, "40-notype.conflist", `{"cniVersion":"1.0.0","name":"notype","plugins":[{"bridge":"x"}]}`)
	testutil.WriteFile(t, dir, "50-gamma.json", `{"cniVersion":"1.0.0","name":"gamma","plugins":[{"type":"macvlan","master":"eth0"}]}`)
	// A later file with a name already seen: the first one (lexical order) wins, as in libcni.
	testutil.WriteFile(t, dir, "60-alpha-again.conflist", strings.Replace(bridgeConflist, "br-alpha", "br-other", 1))
	testutil.WriteFile(t, dir, "65-badname.conflist", `{"cniVersion":"1.0.0","name":"../alpha","plugins":[{"type":"bridge"}]}`)
	testutil.WriteFile(t, dir, "70-ignored.txt", `{"cniVersion":"1.0.0","name":"txt","type":"bridge"}`)
	testutil.Must(t, os.Mkdir(filepath.Join(dir, "80-dir.conflist"), 0o755))
	bigDir := t.TempDir()
	testutil.WriteFile(t, bigDir, "big.conflist", `{"name":"big","pad":"`+strings.Repeat("x", maxConfSize)+`","plugins":[{"type":"bridge"}]}`)

	for _, tc := range []struct {
		name, dir, want string
		wantFile        string   // on success
		wantPlugins     int      // on success
		wantErr         []string // substrings of the error
	}{
		{name: "conflist by name", dir: dir, want: "alpha", wantFile: "10-alpha.conflist", wantPlugins: 2},
		{name: "conf by name, not file name", dir: dir, want: "beta", wantFile: "20-file-name.conf", wantPlugins: 1},
		{name: "json extension", dir: dir, want: "gamma", wantFile: "50-gamma.json", wantPlugins: 1},
		{name: "file name is not a network name", dir: dir, want: "20-file-name", wantErr: []string{
			`no CNI network named "20-file-name" in ` + dir,
			"networks found: alpha, beta, gamma",
			"unparsable files: 30-broken.conflist: invalid JSON",
			"40-notype.conflist: ",
			`65-badname.conflist: invalid CNI network name "../alpha"`,
		}},
		{name: "other extensions and dirs are not read", dir: dir, want: "txt", wantErr: []string{`no CNI network named "txt"`}},
		{name: "empty dir", dir: t.TempDir(), want: "alpha", wantErr: []string{"(no CNI networks found there)"}},
		{name: "missing dir", dir: filepath.Join(dir, "nope"), want: "alpha", wantErr: []string{"(no CNI networks found there)"}},
		{name: "oversized file", dir: bigDir, want: "big", wantErr: []string{"big.conflist: file is larger than"}},
		{name: "slash", dir: dir, want: "a/b", wantErr: []string{"invalid CNI network name"}},
		{name: "dotdot", dir: dir, want: "..", wantErr: []string{"invalid CNI network name"}},
		{name: "dotdot path", dir: dir, want: "../etc/cni/net.d/x", wantErr: []string{"invalid CNI network name"}},
		{name: "dot", dir: dir, want: ".", wantErr: []string{"invalid CNI network name"}},
		{name: "hidden", dir: dir, want: ".alpha", wantErr: []string{"invalid CNI network name"}},
		{name: "empty", dir: dir, want: "", wantErr: []string{"invalid CNI network name"}},
		{name: "space", dir: dir, want: "al pha", wantErr: []string{"invalid CNI network name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw, err := ResolveNetwork(tc.dir, tc.want)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("resolved %q to %s", tc.want, nw.File)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if nw.Name != tc.want || filepath.Base(nw.File) != tc.wantFile || len(nw.List.Plugins) != tc.wantPlugins {
				t.Errorf("got %s from %s with %d plugins, want %s from %s with %d", nw.Name, nw.File, len(nw.List.Plugins), tc.want, tc.wantFile, tc.wantPlugins)
			}
			if tc.want == "alpha" && !strings.Contains(string(nw.Bytes), "br-alpha") {
				t.Errorf("the first file does not win: %s", nw.Bytes)
			}
		})
	}
}

func TestParseNetwork(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		wantName   string
		wantTypes  []string // PluginTypes, on success
		wantErr    string
	}{
		{name: "conflist", data: bridgeConflist, wantName: "alpha", wantTypes: []string{"bridge", "host-local", "portmap"}},
		{name: "single plugin conf", data: singleConf, wantName: "beta", wantTypes: []string{"ptp", "host-local"}},
		{name: "conf without ipam", data: `{"cniVersion":"1.0.0","name":"c","type":"host-device","device":"eth9"}`, wantName: "c", wantTypes: []string{"host-device"}},
		{name: "invalid JSON", data: `{"name":`, wantErr: "invalid JSON"},
		{name: "not an object", data: `["a"]`, wantErr: "invalid JSON"},
		{name: "empty plugins", data: `{"cniVersion":"1.0.0","name":"e","plugins":[]}`, wantErr: "no plugins"},
		{name: "conflist without name", data: `{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}`, wantErr: "no name"},
		{name: "conf without type", data: `{"cniVersion":"1.0.0","name":"c"}`, wantErr: "missing 'type'"},
		{name: "plugin without type", data: `{"cniVersion":"1.0.0","name":"c","plugins":[{"type":"bridge"},{"mtu":1}]}`, wantErr: "missing 'type'"},
		{name: "empty network name", data: `{"cniVersion":"1.0.0","name":"","plugins":[{"type":"bridge"}]}`, wantErr: "invalid CNI network name"},
		{name: "network name is a path", data: `{"cniVersion":"1.0.0","name":"../../etc/x","type":"bridge"}`, wantErr: "invalid CNI network name"},
		{name: "plugin type is a path", data: `{"cniVersion":"1.0.0","name":"c","plugins":[{"type":"../../bin/sh"}]}`, wantErr: "not a plain program name"},
		{name: "conf type is a path", data: `{"cniVersion":"1.0.0","name":"c","type":"/bin/sh"}`, wantErr: "not a plain program name"},
		{name: "ipam type is a path", data: `{"cniVersion":"1.0.0","name":"c","plugins":[{"type":"bridge","ipam":{"type":"../host-local"}}]}`, wantErr: "ipam type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw, err := ParseNetwork([]byte(tc.data))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseNetwork error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if nw.Name != tc.wantName || !reflect.DeepEqual(nw.PluginTypes(), tc.wantTypes) {
				t.Errorf("got %s %v, want %s %v", nw.Name, nw.PluginTypes(), tc.wantName, tc.wantTypes)
			}
			// Attachments record Bytes and re-parse them for ADD and DEL: they must be a conflist that gives the
			// same network (for a .conf, the wrapped list, not the original bytes).
			again, err := ParseNetwork(nw.Bytes)
			if err != nil {
				t.Fatalf("re-parsing Bytes: %v\n%s", err, nw.Bytes)
			}
			if again.Name != nw.Name || !reflect.DeepEqual(again.PluginTypes(), nw.PluginTypes()) ||
				again.List.CNIVersion != nw.List.CNIVersion || !strings.Contains(string(again.Bytes), `"plugins"`) {
				t.Errorf("Bytes do not round-trip: %s", nw.Bytes)
			}
		})
	}
}

func TestCapabilitiesAndMasquerade(t *testing.T) {
	nw, err := ParseNetwork([]byte(bridgeConflist))
	testutil.Must(t, err)
	if caps := nw.Capabilities(); !reflect.DeepEqual(caps, map[string]bool{"portMappings": true}) {
		t.Errorf("Capabilities = %v", caps)
	}
	for _, tc := range []struct {
		data string
		want bool
	}{
		{bridgeConflist, true},
		{singleConf, true},
		{`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}]}`, false},
		{`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","ipMasq":true}]}`, false},
		{`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"tuning"},{"type":"ptp","ipMasq":true}]}`, true},
	} {
		nw, err := ParseNetwork([]byte(tc.data))
		testutil.Must(t, err)
		if got := nw.masqueradesByLinkAddress(); got != tc.want {
			t.Errorf("masqueradesByLinkAddress(%s) = %v, want %v", tc.data, got, tc.want)
		}
	}
}

func TestDeclaredRanges(t *testing.T) {
	type rng struct{ subnet, gw string }
	for _, tc := range []struct {
		name     string
		data     string
		want     []rng
		wantType string
		want4    *rng
		want6    *rng
	}{
		{
			name:     "host-local ranges, default gateway",
			data:     `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.210.1.0/24"}]]}}]}`,
			want:     []rng{{"10.210.1.0/24", "10.210.1.1"}},
			wantType: "host-local", want4: &rng{"10.210.1.0/24", "10.210.1.1"},
		},
		{
			name: "host-local dual stack, explicit gateway, several range sets",
			data: `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[
				[{"subnet":"fd00:210::/64"}],
				[{"subnet":"10.210.9.0/24","gateway":"10.210.9.254"},{"subnet":"10.210.10.0/24"}]]}}]}`,
			want:     []rng{{"fd00:210::/64", "fd00:210::1"}, {"10.210.9.0/24", "10.210.9.254"}, {"10.210.10.0/24", "10.210.10.1"}},
			wantType: "host-local", want4: &rng{"10.210.9.0/24", "10.210.9.254"}, want6: &rng{"fd00:210::/64", "fd00:210::1"},
		},
		{
			name:     "legacy subnet with gateway",
			data:     singleConf,
			want:     []rng{{"10.210.2.0/24", "10.210.2.254"}},
			wantType: "host-local", want4: &rng{"10.210.2.0/24", "10.210.2.254"},
		},
		{
			name:     "legacy subnet, not host-aligned",
			data:     `{"cniVersion":"0.4.0","name":"n","type":"bridge","ipam":{"type":"host-local","subnet":"10.210.3.77/16"}}`,
			want:     []rng{{"10.210.0.0/16", "10.210.0.1"}},
			wantType: "host-local", want4: &rng{"10.210.0.0/16", "10.210.0.1"},
		},
		{
			name:     "other IPAM: no default gateway",
			data:     `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"whereabouts","range":"10.9.0.0/16","subnet":"10.210.4.0/24"}}]}`,
			want:     []rng{{"10.210.4.0/24", ""}},
			wantType: "whereabouts", want4: &rng{"10.210.4.0/24", ""},
		},
		{
			name:     "static: none",
			data:     `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","ipam":{"type":"static","addresses":[{"address":"10.210.5.5/24","gateway":"10.210.5.1"}]}}]}`,
			wantType: "static",
		},
		{
			name:     "dhcp: none",
			data:     `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","ipam":{"type":"dhcp"}}]}`,
			wantType: "dhcp",
		},
		{
			name: "no ipam",
			data: `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"host-device","device":"eth9"}]}`,
		},
		{
			name:     "bad subnets skipped",
			data:     `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"nonsense"},{"subnet":"10.210.6.0/24","gateway":"bogus"}]]}}]}`,
			want:     []rng{{"10.210.6.0/24", "10.210.6.1"}},
			wantType: "host-local", want4: &rng{"10.210.6.0/24", "10.210.6.1"},
		},
		{
			name:     "first plugin with ipam wins",
			data:     `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"tuning"},{"type":"bridge","ipam":{"type":"host-local","subnet":"10.210.7.0/24"}},{"type":"x","ipam":{"type":"host-local","subnet":"10.210.8.0/24"}}]}`,
			want:     []rng{{"10.210.7.0/24", "10.210.7.1"}},
			wantType: "host-local", want4: &rng{"10.210.7.0/24", "10.210.7.1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw, err := ParseNetwork([]byte(tc.data))
			testutil.Must(t, err)
			ranges, typ := nw.DeclaredRanges()
			var got []rng
			for _, r := range ranges {
				gw := ""
				if r.Gateway != nil {
					gw = r.Gateway.String()
				}
				got = append(got, rng{r.Subnet.String(), gw})
			}
			if !reflect.DeepEqual(got, tc.want) || typ != tc.wantType {
				t.Errorf("DeclaredRanges = %v %q, want %v %q", got, typ, tc.want, tc.wantType)
			}
			for _, fam := range []struct {
				v6   bool
				want *rng
			}{{false, tc.want4}, {true, tc.want6}} {
				r := nw.FirstRange(fam.v6)
				switch {
				case r == nil && fam.want == nil:
				case r == nil || fam.want == nil:
					t.Errorf("FirstRange(v6=%v) = %v, want %v", fam.v6, r, fam.want)
				default:
					gw := ""
					if r.Gateway != nil {
						gw = r.Gateway.String()
					}
					if (rng{r.Subnet.String(), gw}) != *fam.want {
						t.Errorf("FirstRange(v6=%v) = %s %s, want %v", fam.v6, r.Subnet, gw, *fam.want)
					}
				}
			}
		})
	}
}

func FuzzParseNetwork(f *testing.F) {
	for _, seed := range []string{
		bridgeConflist,
		singleConf,
		`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","capabilities":{"ips":true,"mac":true}}]}`,
		`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"fd00::/64"}],[{"subnet":"10.1.0.0/16","gateway":"10.1.0.9"}]]}}]}`,
		`{"cniVersion":"1.0.0","name":"n","cniVersions":["0.4.0","1.0.0"],"plugins":[{"type":"ptp","ipMasq":true,"ipam":{"type":"host-local","subnet":"10.2.0.0/24"}}]}`,
		`{"cniVersion":"1.0.0","name":"e","plugins":[]}`,
		`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}`,
		`{"cniVersion":"1.0.0","name":"n","plugins":[null]}`,
		`{"name":"n","plugins":{"type":"bridge"}}`,
		`{"name":7,"type":"bridge"}`,
		`{"name":"n","type":"bridge","ipam":{"ranges":[[{"subnet":7}]]}}`,
		`{"name":"n","type":"bridge","ipam":"host-local"}`,
		`{"name":"","plugins":[{"type":"bridge"}]}`,
		`{"name":`,
		`null`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		nw, err := ParseNetwork(data)
		if err != nil {
			if nw != nil {
				t.Fatalf("error %v with a network", err)
			}
			return
		}
		if nw.Name == "" || nw.List == nil || len(nw.List.Plugins) == 0 {
			t.Fatalf("accepted a network without a name or plugins: %q", data)
		}
		for _, p := range nw.List.Plugins {
			if p.Network == nil || p.Network.Type == "" {
				t.Fatalf("accepted a plugin without a type: %q", data)
			}
		}
		// What callers do with a parsed network must not panic either.
		nw.DeclaredRanges()
		nw.FirstRange(false)
		nw.FirstRange(true)
		nw.Capabilities()
		nw.PluginTypes()
		nw.masqueradesByLinkAddress()
		RequestArgs(nw, []string{"10.0.0.5/24", "fd00::5/64"}, "02:42:0a:00:00:05")
		if _, err := ParseNetwork(nw.Bytes); err != nil {
			t.Fatalf("Bytes of an accepted network do not parse again: %v\n%s", err, nw.Bytes)
		}
	})
}

const dirListDefault = `{"cniVersion":"1.0.0","name":"cniplug","plugins":[
 {"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.217.0.0/16"}]]}}]}`

func dirListConf(name, subnet string) string {
	return `{"cniVersion":"1.0.0","name":"` + name + `","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"` + subnet + `"}}]}`
}

func TestResolveDirList(t *testing.T) {
	host, bundled := t.TempDir(), t.TempDir()
	testutil.WriteFile(t, host, "10-a.conflist", dirListConf("a", "10.1.0.0/24"))
	testutil.WriteFile(t, host, "20-shared.conflist", dirListConf("shared", "10.2.0.0/24"))
	testutil.WriteFile(t, bundled, "10-shared.conflist", dirListConf("shared", "10.3.0.0/24"))
	testutil.WriteFile(t, bundled, "20-cniplug.conflist", dirListDefault)
	dirs := host + string(os.PathListSeparator) + bundled

	for name, want := range map[string]string{"a": "10.1.0.0/24", "shared": "10.2.0.0/24", "cniplug": "10.217.0.0/16"} {
		nw, err := ResolveNetwork(dirs, name)
		if err != nil {
			t.Fatalf("ResolveNetwork(%s): %v", name, err)
		}
		if got := nw.FirstRange(false).Subnet.String(); got != want {
			t.Errorf("ResolveNetwork(%s) found range %s, want %s (the first dir listing the name wins)", name, got, want)
		}
	}
	_, err := ResolveNetwork(dirs, "nope")
	if err == nil || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), bundled) ||
		!strings.Contains(err.Error(), "cniplug") || !strings.Contains(err.Error(), `no CNI network named "nope"`) {
		t.Errorf("miss: the error should name both dirs and what they hold: %v", err)
	}
	if _, err := ResolveNetwork(dirs, "../etc"); err == nil || strings.Count(err.Error(), "invalid CNI network name") != 1 {
		t.Errorf("invalid name: want one invalid-name message, got %v", err)
	}
	if _, err := ResolveNetwork("", "a"); err == nil || !strings.Contains(err.Error(), "no CNI conf dir") {
		t.Errorf("empty list: %v", err)
	}
}
