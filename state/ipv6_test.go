package state

import (
	"errors"
	"testing"
	"time"
)

func TestTakePendingV6(t *testing.T) {
	s := openStore(t, t.TempDir())
	mk := func(id, mac, v4, v6 string, created int) *Attachment {
		a := att(id, "dual", PhasePending, v4)
		a.Interface.IPv6 = v6
		a.RequestMAC = mac
		a.Created = a.Created.Add(time.Duration(created) * time.Second)
		if err := s.PutAttachment(a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	mk("aaaaaaaaaaaaaaaa", "02:00:00:00:00:0a", "10.0.0.2/24", "fd00::2/64", 1)
	mk("bbbbbbbbbbbbbbbb", "02:00:00:00:00:0b", "10.0.0.3/24", "fd00::3/64", 2)
	other := att("cccccccccccccccc", "other", PhasePending, "10.1.0.2/24")
	other.RequestMAC = "02:00:00:00:00:0a"
	if err := s.PutAttachment(other); err != nil {
		t.Fatal(err)
	}
	// By MAC: each endpoint gets its own attachment's IPv6, whatever the order, once.
	for _, tc := range []struct{ mac, want string }{{"02:00:00:00:00:0B", "fd00::3/64"}, {"02:00:00:00:00:0a", "fd00::2/64"}} {
		a, err := s.TakePendingV6("dual", tc.mac)
		if err != nil || a.Interface.IPv6 != tc.want {
			t.Errorf("mac %s: %v %v, want %s", tc.mac, a, err, tc.want)
		}
	}
	if _, err := s.TakePendingV6("dual", "02:00:00:00:00:0a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("taken twice: %v", err)
	}
	// Without a MAC: only an unambiguous pairing.
	mk("dddddddddddddddd", "", "10.0.0.4/24", "fd00::4/64", 3)
	if a, err := s.TakePendingV6("dual", ""); err != nil || a.ID() != "dddddddddddddddd" {
		t.Errorf("single candidate: %v %v", a, err)
	}
	mk("eeeeeeeeeeeeeeee", "", "10.0.0.5/24", "fd00::5/64", 4)
	mk("ffffffffffffffff", "", "10.0.0.6/24", "fd00::6/64", 5)
	if _, err := s.TakePendingV6("dual", ""); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("two candidates: %v, want ErrAmbiguous", err)
	}
	// Claimed attachments are no longer candidates.
	if _, err := s.ClaimPending("dual", "10.0.0.5", "net", "ep"); err != nil {
		t.Fatal(err)
	}
	if a, err := s.TakePendingV6("dual", ""); err != nil || a.ID() != "ffffffffffffffff" {
		t.Errorf("after a claim: %v %v", a, err)
	}
}
