package naming

import (
	"net"
	"regexp"
	"testing"
)

func TestShortID(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"", ""},
		{"abc", "abc"},
		{"0123456789ab", "0123456789ab"},
		{"0123456789abcdef", "0123456789ab"},
	} {
		if got := ShortID(tc.id); got != tc.want {
			t.Errorf("ShortID(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
}

func TestAddress(t *testing.T) {
	for _, tc := range []struct{ cidr, want string }{
		{"", ""},
		{"10.0.0.2/24", "10.0.0.2"},
		{"10.0.0.2", "10.0.0.2"},
		{"fd00::2/64", "fd00::2"},
		{"fd00::2", "fd00::2"},
	} {
		if got := Address(tc.cidr); got != tc.want {
			t.Errorf("Address(%q) = %q, want %q", tc.cidr, got, tc.want)
		}
	}
}

func TestRandomID(t *testing.T) {
	a, b := RandomID(), RandomID()
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(a) || a == b {
		t.Errorf("RandomID: %q, %q", a, b)
	}
}

func TestRandomMAC(t *testing.T) {
	a, b := RandomMAC(), RandomMAC()
	if !regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`).MatchString(a) || a == b {
		t.Fatalf("RandomMAC: %q, %q", a, b)
	}
	hw, err := net.ParseMAC(a)
	if err != nil || hw[0]&0x01 != 0 || hw[0]&0x02 == 0 {
		t.Errorf("RandomMAC %s is not a locally administered unicast address", a)
	}
}
