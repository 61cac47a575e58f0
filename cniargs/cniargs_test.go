package cniargs

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	e, err := Parse(map[string]string{
		"cni":                        "ignored: not an extra-argument option",
		"cni.args.K8S_POD_NAME":      "web-0",
		"cni.args.K8S_POD_NAMESPACE": "default",
		"cni.bandwidth.ingressRate":  "1000000",
		"cni.bandwidth.ingressBurst": "50000",
	})
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := [][2]string{{"K8S_POD_NAME", "web-0"}, {"K8S_POD_NAMESPACE", "default"}}
	if !reflect.DeepEqual(e.Args, wantArgs) {
		t.Errorf("args %v", e.Args)
	}
	bw := e.CapabilityArgs["bandwidth"].(map[string]any)
	if bw["ingressRate"] != uint64(1000000) || bw["ingressBurst"] != uint64(50000) || len(bw) != 2 {
		t.Errorf("bandwidth %v", bw)
	}
	// The docker CLI lowercases driver-opt keys.
	if e, err := Parse(map[string]string{"cni.args.k8s_pod_name": "web-0", "cni.bandwidth.ingressrate": "1", "cni.bandwidth.ingressburst": "2"}); err != nil ||
		!reflect.DeepEqual(e.Args, [][2]string{{"K8S_POD_NAME", "web-0"}}) || e.CapabilityArgs["bandwidth"].(map[string]any)["ingressRate"] != uint64(1) {
		t.Errorf("lowercased keys: %+v %v", e, err)
	}
	for opts, want := range map[string]string{
		"cni.args.CNI_PATH=/tmp":          "is not allowed",
		"cni.args.K8S_POD_NAME=../x":      "value must be",
		"cni.args.K8S_POD_NAME=a;IP=1":    "value must be",
		"cni.args.K8S_POD_NAME=":          "value must be",
		"cni.ipam.dataDir=/etc":           "is not allowed",
		"cni.bandwidth.ingressRate=fast":  "positive whole number",
		"cni.bandwidth.egressRate=10":     "must be given together",
		"cni.bandwidth.ingressBurst=-1":   "positive whole number",
		"cni.runtimeConfig.portMappings=": "is not allowed",
	} {
		k, v, _ := strings.Cut(opts, "=")
		_, err := Parse(map[string]string{k: v})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", opts, err, want)
		}
		if err != nil && want == "is not allowed" && !strings.Contains(err.Error(), "cni.args.K8S_POD_NAME") {
			t.Errorf("%s: error does not list the allowed options: %v", opts, err)
		}
	}
}

func TestMergeAndCheck(t *testing.T) {
	nw, _ := Parse(map[string]string{"cni.args.K8S_POD_NAME": "a", "cni.args.K8S_POD_NAMESPACE": "ns"})
	ep, _ := Parse(map[string]string{"cni.args.K8S_POD_NAME": "b", "cni.bandwidth.egressRate": "1", "cni.bandwidth.egressBurst": "2"})
	m := nw.Merge(ep)
	if !reflect.DeepEqual(m.Args, [][2]string{{"K8S_POD_NAME", "b"}, {"K8S_POD_NAMESPACE", "ns"}}) {
		t.Errorf("merged args %v", m.Args)
	}
	nwBW, _ := Parse(map[string]string{"cni.bandwidth.ingressRate": "5", "cni.bandwidth.ingressBurst": "6"})
	if bw := nw.Merge(nwBW).Merge(ep).CapabilityArgs["bandwidth"].(map[string]any); len(bw) != 4 {
		t.Errorf("bandwidth not merged field by field: %v", bw)
	}
	if err := m.Check("n", map[string]bool{"portMappings": true}); err == nil || !strings.Contains(err.Error(), `"bandwidth" capability`) {
		t.Errorf("check without bandwidth: %v", err)
	}
	if err := m.Check("n", map[string]bool{"bandwidth": true}); err != nil {
		t.Error(err)
	}
	args, caps := m.Apply([][2]string{{"IgnoreUnknown", "1"}}, nil)
	if len(args) != 3 || caps["bandwidth"] == nil {
		t.Errorf("apply: %v %v", args, caps)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("cni.args.K8S_POD_NAME", "web-0", "cni.bandwidth.ingressRate", "10")
	f.Add("cni.bandwidth.egressRate", "1", "cni.bandwidth.egressBurst", "2")
	f.Add("cni.args.X", "../../etc", "com.docker.network.portmap", "[]")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		e, err := Parse(map[string]string{k1: v1, k2: v2})
		if err != nil {
			return
		}
		for _, kv := range e.Args {
			if !slices.Contains(argKeys, kv[0]) || !argValue.MatchString(kv[1]) || strings.ContainsAny(kv[1], ";=/") {
				t.Fatalf("accepted CNI_ARGS %q=%q", kv[0], kv[1])
			}
		}
		for c := range e.CapabilityArgs {
			if c != "bandwidth" {
				t.Fatalf("accepted capability %q", c)
			}
		}
	})
}
