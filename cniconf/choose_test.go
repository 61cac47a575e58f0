package cniconf

import (
	"context"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// Both drivers open their create calls with Choose: the options are checked, the CNI network resolved
// through the conf dir list and validated with the real CNI plugins, and the cni.* arguments checked
// against its chain.
func TestChoose(t *testing.T) {
	bin := testutil.CNIBinDir(t)
	host, bundled := t.TempDir(), t.TempDir()
	testutil.WriteFile(t, host, "10-a.conflist", conf("a", "10.1.0.0/24"))
	testutil.WriteFile(t, bundled, "20-cniplug.conflist", defaultConflist)
	testutil.WriteFile(t, bundled, "30-nobin.conflist", `{"cniVersion":"1.0.0","name":"nobin","plugins":[{"type":"no-such-plugin"}]}`)
	runner, err := cnibridge.NewRunner(cnibridge.Config{BinDirs: []string{bin}, CacheDir: t.TempDir(), NetNSDir: t.TempDir()})
	if err != nil {
		t.Skipf("skipping: cannot build the CNI runner: %v", err)
	}
	t.Cleanup(func() { _ = runner.Close() })
	dirs := host + ":" + bundled

	for _, tc := range []struct {
		name     string
		chooser  Chooser
		opts     Options
		wantNet  string
		wantArgs int
		wantErr  []string
	}{
		{name: "named", opts: Options{Values: map[string]string{"cni": "a"}}, wantNet: "a"},
		{name: "named in the second dir", opts: Options{Values: map[string]string{"cni": "cniplug"}}, wantNet: "cniplug"},
		{name: "default", chooser: Chooser{DefaultNetwork: "cniplug"}, opts: Options{Values: map[string]string{}}, wantNet: "cniplug"},
		{name: "option beats default", chooser: Chooser{DefaultNetwork: "cniplug"}, opts: Options{Values: map[string]string{"cni": "a"}}, wantNet: "a"},
		{name: "cni args", opts: Options{Values: map[string]string{"cni": "a", "cni.args.K8S_POD_NAME": "web-0"}}, wantNet: "a", wantArgs: 1},
		{name: "known option", opts: Options{Values: map[string]string{"cni": "a", "async-delete": "true"}, Known: []string{"async-delete"}}, wantNet: "a"},
		{name: "missing", opts: Options{Flag: "--opt", Values: map[string]string{}, Purpose: "this Docker network uses"},
			wantErr: []string{"missing --opt cni=<name>", dirs, "this Docker network uses"}},
		{name: "unknown options", opts: Options{Flag: "--ipam-opt", Values: map[string]string{"cni": "a", "zzz": "1", "aaa": "2"}, Known: []string{"k"}},
			wantErr: []string{"unknown option(s) aaa, zzz: --ipam-opt accepts cni=<CNI network>, k, cni.args.K8S_POD_NAME"}},
		{name: "argument not allowed", opts: Options{Flag: "--opt", Values: map[string]string{"cni": "a", "cni.args.CNI_PATH": "/tmp"}},
			wantErr: []string{"--opt: option cni.args.CNI_PATH is not allowed"}},
		{name: "argument the chain cannot take", opts: Options{Flag: "--opt", Values: map[string]string{"cni": "a",
			"cni.bandwidth.ingressRate": "1000", "cni.bandwidth.ingressBurst": "1000"}},
			wantErr: []string{"--opt: options cni.bandwidth.* need a plugin with the \"bandwidth\" capability"}},
		{name: "unknown network", opts: Options{Values: map[string]string{"cni": "nope"}}, wantErr: []string{`no CNI network named "nope" in ` + host, bundled}},
		{name: "plugin missing", opts: Options{Values: map[string]string{"cni": "nobin"}}, wantErr: []string{`"no-such-plugin" not found`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.chooser
			c.ConfDirs, c.Validator = dirs, runner
			nw, extra, err := c.Choose(context.Background(), tc.opts)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("chose %s", nw.Name)
				}
				for _, want := range tc.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q lacks %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if nw.Name != tc.wantNet || len(extra.Args) != tc.wantArgs {
				t.Errorf("chose %s with args %v, want %s with %d", nw.Name, extra.Args, tc.wantNet, tc.wantArgs)
			}
		})
	}
}
