package driver

import (
	"reflect"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/cnibridge"
)

func TestStringOptions(t *testing.T) {
	tests := []struct {
		name    string
		in      any
		want    map[string]string
		wantErr string
	}{
		{name: "nil (no --opt given)", in: nil, want: map[string]string{}},
		{name: "empty map", in: map[string]any{}, want: map[string]string{}},
		{name: "strings", in: map[string]any{"cni": "mynet", "other": ""}, want: map[string]string{"cni": "mynet", "other": ""}},
		{name: "non-string value", in: map[string]any{"cni": 1.0}, wantErr: `option "cni" must be a string`},
		{name: "nested object value", in: map[string]any{"cni": map[string]any{}}, wantErr: `option "cni" must be a string`},
		{name: "null value", in: map[string]any{"cni": nil}, wantErr: `option "cni" must be a string`},
		{name: "wrong type: string", in: "cni=mynet", wantErr: "malformed network options: string"},
		{name: "wrong type: list", in: []any{"cni"}, wantErr: "malformed network options: []interface {}"},
		// JSON decoding never produces map[string]string; only the decoded form is accepted.
		{name: "wrong type: map[string]string", in: map[string]string{"cni": "x"}, wantErr: "malformed network options: map[string]string"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stringOptions(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("stringOptions(%#v) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("stringOptions(%#v): %v", tc.in, err)
			}
			if got == nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("stringOptions(%#v) = %#v, want %#v", tc.in, got, tc.want)
			}
		})
	}
}

func parseNet(t *testing.T, conf string) *cnibridge.Network {
	t.Helper()
	nw, err := cnibridge.ParseNetwork([]byte(conf))
	if err != nil {
		t.Fatalf("ParseNetwork: %v\n%s", err, conf)
	}
	return nw
}

// TestDockerFlags: Docker's own CreateNetwork flags are either honoured (internal) or refused (--ipv4=false),
// never accepted and ignored; the values arrive as JSON booleans (strings from some API clients).
func TestDockerFlags(t *testing.T) {
	for _, tc := range []struct {
		name         string
		options      map[string]any
		wantInternal bool
		wantErr      string
	}{
		{"none", map[string]any{}, false, ""},
		{"internal", map[string]any{internalOption: true}, true, ""},
		{"internal as string", map[string]any{internalOption: "true"}, true, ""},
		{"not internal", map[string]any{internalOption: false, enableIPv4Option: true}, false, ""},
		{"ipv4 off", map[string]any{enableIPv4Option: false}, false, "--ipv4=false is not supported"},
		{"garbage", map[string]any{internalOption: "maybe"}, false, "want true or false"},
		{"wrong type", map[string]any{internalOption: 1.0}, false, "want a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			internal, err := dockerFlags(tc.options)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || internal != tc.wantInternal {
				t.Fatalf("got internal=%v err=%v, want internal=%v", internal, err, tc.wantInternal)
			}
		})
	}
}

func TestTakeICC(t *testing.T) {
	for _, tc := range []struct {
		value   string
		present bool
		wantErr string
	}{
		{present: false},
		{value: "true", present: true},
		{value: "false", present: true, wantErr: "enable_icc=false is not supported"},
		{value: "maybe", present: true, wantErr: "want true or false"},
	} {
		opts := map[string]string{"cni": "x"}
		if tc.present {
			opts[optEnableICC] = tc.value
		}
		err := takeICC(opts)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.value, err)
			}
			if _, left := opts[optEnableICC]; left {
				t.Errorf("%q: the option is left for the unknown-option check", tc.value)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%q: error %v, want %q", tc.value, err, tc.wantErr)
		}
	}
}
