package naming

import (
	"errors"
	"net"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheckMAC(t *testing.T) {
	for _, tc := range []struct {
		mac string
		ok  bool
	}{
		{"02:42:ac:11:00:02", true},
		{"02:42:AC:11:00:02", true},
		{"02-42-ac-11-00-02", true},
		{"0242.ac11.0002", true},
		{"", false},
		{"02:00:00:5b:00:77;IP=10.91.0.200", false},
		{"02:42:ac:11:00:02 ", false},
		{" 02:42:ac:11:00:02", false},
		{"02:42:ac:11:00:02\n", false},
		{"02:42:ac:11:00", false},
		{"02:42:ac:11:00:02:03:04", false}, // EUI-64
		{"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", false}, // IPoIB
		{"02:42:ac:11:00:0g", false},
		{"0242ac110002", true}, // net.ParseMAC takes the bare form too
	} {
		err := CheckMAC("MacAddress", tc.mac)
		if (err == nil) != tc.ok {
			t.Errorf("CheckMAC(%q) = %v, want ok=%v", tc.mac, err, tc.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "invalid MacAddress "+Quote(tc.mac)+": want six hex bytes like 02:42:ac:11:00:02") {
			t.Errorf("CheckMAC(%q) error %q does not name the field and the rule", tc.mac, err)
		}
	}
}

func TestCheckDockerID(t *testing.T) {
	id := RandomID()
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{id, true},
		{strings.Repeat("0", 64), true},
		{"", false},
		{id[:63], false},
		{id + "0", false},
		{strings.ToUpper(strings.Repeat("a", 64)), false},
		{"../../../../tmp/x", false},
		{strings.Repeat("g", 64), false},
		{id[:62] + "/x", false},
		{"abcdefghijklmnopqrstuvwxy", false}, // swarm's form is the driver's to accept, for networks only
	} {
		err := CheckDockerID("EndpointID", tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("CheckDockerID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		var fe *FieldError
		if err != nil && (!errors.As(err, &fe) || fe.Field != "EndpointID") {
			t.Errorf("CheckDockerID(%q) = %v, want a FieldError for EndpointID", tc.id, err)
		}
	}
}

func TestCheckAddresses(t *testing.T) {
	for _, tc := range []struct {
		check func(string, string) error
		value string
		ok    bool
	}{
		{CheckCIDR, "10.0.0.2/24", true},
		{CheckCIDR, "fd00::2/64", true},
		{CheckCIDR, "0.0.0.0/0", true},
		{CheckCIDR, "10.0.0.2", false},
		{CheckCIDR, "10.0.0.2/33", false},
		{CheckCIDR, "10.0.0.2/24;IP=10.0.0.9", false},
		{CheckCIDR, "", false},
		{CheckIP, "10.0.0.2", true},
		{CheckIP, "fd00::2", true},
		{CheckIP, "10.0.0.2/24", false},
		{CheckIP, "10.0.0.256", false},
		{CheckIP, "fe80::1%eth0", false},
		{CheckIP, "", false},
	} {
		if err := tc.check("Address", tc.value); (err == nil) != tc.ok {
			t.Errorf("check(%q) = %v, want ok=%v", tc.value, err, tc.ok)
		}
	}
}

func TestFieldErrorQuotesLongValuesShort(t *testing.T) {
	err := CheckMAC("MacAddress", strings.Repeat("a", 1<<20))
	if len(err.Error()) > 300 || !strings.Contains(err.Error(), "(1048576 bytes)") {
		t.Fatalf("error for a 1 MiB value: %.400s", err)
	}
}

func TestBoundName(t *testing.T) {
	long := strings.Repeat("n", 300)
	bounded := BoundName(long)
	for _, tc := range []struct {
		name, want string
	}{
		{"", ""},
		{"web", "web"},
		{strings.Repeat("a", MaxNameLen), strings.Repeat("a", MaxNameLen)},
		{long, bounded},
	} {
		if got := BoundName(tc.name); got != tc.want {
			t.Errorf("BoundName(%.20q...) = %q, want %q", tc.name, got, tc.want)
		}
	}
	if len(bounded) != nameKeep+1+nameHashLen || !strings.HasPrefix(bounded, long[:nameKeep]+"-") {
		t.Errorf("BoundName(300 x n) = %q: want the first 200 bytes, '-' and 8 hex digits", bounded)
	}
	// Same first 200 bytes, different names: different results.
	if other := BoundName(long[:299] + "m"); other == bounded {
		t.Errorf("two long names bound to the same %q", other)
	}
	// A UTF-8 character across the 200th byte is not split.
	multi := strings.Repeat("a", nameKeep-1) + strings.Repeat("é", 100)
	if got := BoundName(multi); !utf8.ValidString(got) || len(got) > nameKeep+1+nameHashLen {
		t.Errorf("BoundName of a multi-byte name = %q: not valid UTF-8 or too long", got)
	}
}

func FuzzCheckMAC(f *testing.F) {
	for _, s := range []string{"02:42:ac:11:00:02", "02:00:00:5b:00:77;IP=10.91.0.200", "0242.ac11.0002", "02-42-ac-11-00-02", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckMAC("MacAddress", s) != nil {
			return
		}
		// Whatever is accepted is an Ethernet MAC and nothing else: it cannot smuggle a CNI_ARGS key.
		hw, err := net.ParseMAC(s)
		if err != nil || len(hw) != 6 || strings.ContainsAny(s, ";= \t\n\x00") || len(s) > 17 {
			t.Fatalf("CheckMAC accepted %q", s)
		}
	})
}

func FuzzBoundName(f *testing.F) {
	for _, s := range []string{"", "web", strings.Repeat("x", 254), strings.Repeat("é", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := BoundName(s)
		switch {
		case len(s) <= MaxNameLen && got != s:
			t.Fatalf("BoundName changed a short name: %q -> %q", s, got)
		case len(got) > MaxNameLen:
			t.Fatalf("BoundName(%d bytes) = %d bytes", len(s), len(got))
		case utf8.ValidString(s) && !utf8.ValidString(got):
			t.Fatalf("BoundName split a character: %q", got)
		case BoundName(s) != got:
			t.Fatal("BoundName is not deterministic")
		}
	})
}
