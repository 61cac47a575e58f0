package cnibridge

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A plugin gets the CNI_* variables and a PATH: the configured one (the selected iptables backend first), or
// else cniplug's own; nothing else of cniplug's environment.
func TestExecPluginEnvironment(t *testing.T) {
	plugin := filepath.Join(t.TempDir(), "printenv-plugin")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\nenv | sort\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	environ := []string{"CNI_COMMAND=VERSION", "PATH=/inherited/bin:/bin", "SECRET=1"}
	for _, tc := range []struct {
		name, path, wantPATH string
	}{
		{"inherited", "", "PATH=/inherited/bin:/bin"},
		{"configured", "/run/cniplug/iptables:/bin", "PATH=/run/cniplug/iptables:/bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := (&boundedExec{path: tc.path}).ExecPlugin(context.Background(), plugin, nil, environ)
			if err != nil {
				t.Fatal(err)
			}
			env := string(out)
			if !strings.Contains(env, tc.wantPATH+"\n") || strings.Count(env, "PATH=") != 1 ||
				!strings.Contains(env, "CNI_COMMAND=VERSION\n") || strings.Contains(env, "SECRET") {
				t.Errorf("plugin environment:\n%s\nwant %s, CNI_COMMAND and nothing else of cniplug's", env, tc.wantPATH)
			}
		})
	}
}
