package state

import (
	"errors"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
)

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// att builds an attachment of CNI network cniName with the given container ID, phase and IPv4 address.
func att(id, cniName string, phase Phase, ipv4 string) *Attachment {
	return &Attachment{
		Attachment: cnibridge.Attachment{
			ContainerID: id,
			IfName:      "eth0",
			NetNS:       "/run/netns/cniplug-" + id[:12],
			HostIfName:  "cnp" + id[:12],
			Network:     cniName,
			Conflist:    []byte(`{"cniVersion":"1.0.0","name":"` + cniName + `","plugins":[{"type":"bridge"}]}`),
			Args:        [][2]string{{"IgnoreUnknown", "1"}},
			Interface:   cnibridge.Interface{IPv4: ipv4, MAC: "02:42:ac:11:00:02", MTU: 1500, Gateway: "10.0.0.1"},
		},
		Phase:   phase,
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestNetworksPutGetDelete(t *testing.T) {
	s := openStore(t, t.TempDir())
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		net  *Network
	}{
		{"cni ipam", &Network{ID: "net-cni", CNIName: "a", Conflist: []byte(`{"name":"a"}`), Mode: ModeCNIIPAM, IPv4Pool: "10.1.0.0/24", Created: created}},
		{"null ipam", &Network{ID: "net-null", CNIName: "b", Conflist: []byte(`{"name":"b"}`), Mode: ModeNull, Created: created}},
		{"docker ipam dual stack", &Network{ID: "net-docker", CNIName: "c", Conflist: []byte(`{"name":"c"}`), Mode: ModeDocker,
			IPv4Pool: "10.2.0.0/24", IPv4Gateway: "10.2.0.1/24", IPv6Pool: "fd00::/64", Created: created}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Network(tc.net.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Network before put: err = %v, want ErrNotFound", err)
			}
			if err := s.PutNetwork(tc.net); err != nil {
				t.Fatal(err)
			}
			got, err := s.Network(tc.net.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.net) {
				t.Fatalf("Network = %+v, want %+v", got, tc.net)
			}
			// A second put replaces the record.
			upd := *tc.net
			upd.CNIName = "renamed"
			if err := s.PutNetwork(&upd); err != nil {
				t.Fatal(err)
			}
			if got, _ := s.Network(tc.net.ID); got.CNIName != "renamed" {
				t.Fatalf("after update CNIName = %q", got.CNIName)
			}
			if err := s.DeleteNetwork(tc.net.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Network(tc.net.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Network after delete: err = %v, want ErrNotFound", err)
			}
			// Deleting what does not exist is not an error (Docker may retry DeleteNetwork).
			if err := s.DeleteNetwork(tc.net.ID); err != nil {
				t.Fatalf("second DeleteNetwork: %v", err)
			}
		})
	}
}

func TestPoolsPutGetListDelete(t *testing.T) {
	s := openStore(t, t.TempDir())
	if ps, err := s.Pools(); err != nil || len(ps) != 0 {
		t.Fatalf("Pools on empty store = %v, %v", ps, err)
	}
	pools := []*Pool{
		{ID: "cniplug-a", CNIName: "a", Conflist: []byte(`{"name":"a"}`), CIDR: "10.1.0.0/24"},
		{ID: "cniplug-b", CNIName: "b", Conflist: []byte(`{"name":"b"}`), CIDR: "0.0.0.0/0"},
		{ID: "cniplug-c", CNIName: "c", Conflist: []byte(`{"name":"c"}`), CIDR: "fd00::/64", V6: true},
	}
	for _, p := range pools {
		if err := s.PutPool(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pools {
		t.Run(p.ID, func(t *testing.T) {
			got, err := s.Pool(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, p) {
				t.Fatalf("Pool = %+v, want %+v", got, p)
			}
		})
	}
	list, err := s.Pools()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(list, pools) { // bbolt iterates in key order, which is the order above
		t.Fatalf("Pools = %+v, want %+v", list, pools)
	}
	if err := s.DeletePool("cniplug-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool("cniplug-b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Pool after delete: err = %v, want ErrNotFound", err)
	}
	if list, _ := s.Pools(); len(list) != 2 {
		t.Fatalf("Pools after delete = %d entries, want 2", len(list))
	}
	if err := s.DeletePool("cniplug-b"); err != nil {
		t.Fatalf("second DeletePool: %v", err)
	}
}

func TestAttachmentsPutGetListDelete(t *testing.T) {
	tests := []struct {
		name string
		a    *Attachment
	}{
		{"adding", att("aaaaaaaaaaaa0001", "net1", PhaseAdding, "")},
		{"pending", att("aaaaaaaaaaaa0002", "net1", PhasePending, "10.0.0.2/24")},
		{"endpoint", func() *Attachment {
			a := att("aaaaaaaaaaaa0003", "net1", PhaseEndpoint, "10.0.0.3/24")
			a.NetworkID, a.EndpointID = "dnet", "ep3"
			return a
		}()},
		{"joined with capability args and routes", func() *Attachment {
			a := att("aaaaaaaaaaaa0004", "net2", PhaseJoined, "10.0.0.4/24")
			a.NetworkID, a.EndpointID, a.PoolID = "dnet", "ep4", "cniplug-p"
			a.CapabilityArgs = map[string]any{"ips": []any{"10.0.0.4/24"}, "mac": "02:00:00:00:00:04"}
			a.Interface.IPv6 = "fd00::4/64"
			a.Interface.Routes = []cnibridge.Route{{Destination: "10.9.0.0/16", NextHop: "10.0.0.1"}, {Destination: "10.8.0.0/16"}}
			return a
		}()},
	}
	s := openStore(t, t.TempDir())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.PutAttachment(tc.a); err != nil {
				t.Fatal(err)
			}
			got, err := s.Attachment(tc.a.ID())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.a) {
				t.Fatalf("Attachment =\n %+v\nwant\n %+v", got, tc.a)
			}
		})
	}
	list, err := s.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(tests) {
		t.Fatalf("Attachments = %d entries, want %d", len(list), len(tests))
	}
	for _, tc := range tests {
		if err := s.DeleteAttachment(tc.a); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Attachment(tc.a.ID()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: Attachment after delete: err = %v, want ErrNotFound", tc.name, err)
		}
		if tc.a.EndpointID != "" {
			if _, err := s.AttachmentByEndpoint(tc.a.EndpointID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s: endpoint index survived the delete: err = %v", tc.name, err)
			}
		}
	}
	if list, _ := s.Attachments(); len(list) != 0 {
		t.Fatalf("Attachments after deleting all = %d entries", len(list))
	}
}

func TestEndpointIndex(t *testing.T) {
	s := openStore(t, t.TempDir())
	if _, err := s.AttachmentByEndpoint("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown endpoint: err = %v, want ErrNotFound", err)
	}
	old := att("bbbbbbbbbbbb0001", "net1", PhaseEndpoint, "10.0.0.2/24")
	old.NetworkID, old.EndpointID = "dnet", "ep"
	if err := s.PutAttachment(old); err != nil {
		t.Fatal(err)
	}
	if got, err := s.AttachmentByEndpoint("ep"); err != nil || got.ID() != old.ID() {
		t.Fatalf("AttachmentByEndpoint = %v, %v; want %s", got, err, old.ID())
	}
	// The endpoint is re-pointed at a new attachment (e.g. a retried create); deleting the old attachment
	// must not drop the index entry that now belongs to the new one.
	newer := att("bbbbbbbbbbbb0002", "net1", PhaseEndpoint, "10.0.0.3/24")
	newer.NetworkID, newer.EndpointID = "dnet", "ep"
	if err := s.PutAttachment(newer); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAttachment(old); err != nil {
		t.Fatal(err)
	}
	if got, err := s.AttachmentByEndpoint("ep"); err != nil || got.ID() != newer.ID() {
		t.Fatalf("after deleting the old attachment AttachmentByEndpoint = %v, %v; want %s", got, err, newer.ID())
	}
	// The index is kept in step with the phase changes an attachment goes through.
	newer.Phase = PhaseJoined
	if err := s.PutAttachment(newer); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.AttachmentByEndpoint("ep"); got.Phase != PhaseJoined {
		t.Fatalf("phase via endpoint index = %q, want %q", got.Phase, PhaseJoined)
	}
	if err := s.DeleteAttachment(newer); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachmentByEndpoint("ep"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: err = %v, want ErrNotFound", err)
	}
}

// op is one step of a pending/claim/release scenario.
type op struct {
	do      string // "pending", "claim", "delete", "release"
	id      string // attachment ID (pending, delete) or endpoint ID (claim)
	net     string // CNI network
	ip      string
	wantErr error  // for claim and release
	wantID  string // claim: the attachment claimed; release: the pending attachment returned ("" = none)
}

func TestClaimPendingAndTakeRelease(t *testing.T) {
	const (
		a = "cccccccccccc000a"
		b = "cccccccccccc000b"
		c = "cccccccccccc000c"
	)
	tests := []struct {
		name  string
		steps []op
	}{
		{"release of an unknown address finds nothing", []op{
			{do: "release", net: "n", ip: "10.0.0.9", wantErr: ErrNotFound},
		}},
		{"claim with nothing pending fails", []op{
			{do: "claim", id: "epA", net: "n", ip: "10.0.0.2", wantErr: ErrNotFound},
		}},
		{"unclaimed pending address is returned by the release", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "release", net: "n", ip: "10.0.0.2", wantID: a},
			// TakeRelease does not forget the attachment itself: the caller tears it down, then deletes it.
			{do: "delete", id: a},
			{do: "release", net: "n", ip: "10.0.0.2", wantErr: ErrNotFound},
		}},
		{"claimed address: the first release is consumed and returns nothing", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "claim", id: "epA", net: "n", ip: "10.0.0.2", wantID: a},
			{do: "claim", id: "epB", net: "n", ip: "10.0.0.2", wantErr: ErrNotFound}, // claimed only once
			{do: "delete", id: a},
			{do: "release", net: "n", ip: "10.0.0.2"},
			{do: "release", net: "n", ip: "10.0.0.2", wantErr: ErrNotFound},
		}},
		{"release before the endpoint is deleted is still consumed", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "claim", id: "epA", net: "n", ip: "10.0.0.2", wantID: a},
			{do: "release", net: "n", ip: "10.0.0.2"},
		}},
		{"race: address reused as pending for B before A's release arrives", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "claim", id: "epA", net: "n", ip: "10.0.0.2", wantID: a},
			{do: "delete", id: a},                                         // DeleteEndpoint of A: CNI DEL frees 10.0.0.2
			{do: "pending", id: b, net: "n", ip: "10.0.0.2"},              // RequestAddress for B gets it again
			{do: "release", net: "n", ip: "10.0.0.2"},                     // A's release: must not return B
			{do: "claim", id: "epB", net: "n", ip: "10.0.0.2", wantID: b}, // B is still claimable
			{do: "delete", id: b},
			{do: "release", net: "n", ip: "10.0.0.2"}, // B's release
			{do: "release", net: "n", ip: "10.0.0.2", wantErr: ErrNotFound},
		}},
		{"race: A's release arrives while B's reuse is still unclaimed, then B is released unclaimed", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "claim", id: "epA", net: "n", ip: "10.0.0.2", wantID: a},
			{do: "delete", id: a},
			{do: "pending", id: b, net: "n", ip: "10.0.0.2"},
			{do: "release", net: "n", ip: "10.0.0.2"},            // A's
			{do: "release", net: "n", ip: "10.0.0.2", wantID: b}, // B's own release (its container never started)
		}},
		{"two claims of one address owe two releases", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "claim", id: "epA", net: "n", ip: "10.0.0.2", wantID: a},
			{do: "delete", id: a},
			{do: "pending", id: b, net: "n", ip: "10.0.0.2"},
			{do: "claim", id: "epB", net: "n", ip: "10.0.0.2", wantID: b},
			{do: "delete", id: b},
			{do: "pending", id: c, net: "n", ip: "10.0.0.2"},
			{do: "release", net: "n", ip: "10.0.0.2"},
			{do: "release", net: "n", ip: "10.0.0.2"},
			{do: "release", net: "n", ip: "10.0.0.2", wantID: c},
		}},
		{"the same address on two CNI networks is two addresses", []op{
			{do: "pending", id: a, net: "n1", ip: "10.0.0.2"},
			{do: "pending", id: b, net: "n2", ip: "10.0.0.2"},
			{do: "claim", id: "epA", net: "n1", ip: "10.0.0.2", wantID: a},
			{do: "release", net: "n2", ip: "10.0.0.2", wantID: b},
			{do: "release", net: "n1", ip: "10.0.0.2"},
			{do: "claim", id: "epB", net: "n2", ip: "10.0.0.2", wantID: b},
		}},
		{"deleting a stale attachment keeps the newer pending index entry", []op{
			{do: "pending", id: a, net: "n", ip: "10.0.0.2"},
			{do: "pending", id: b, net: "n", ip: "10.0.0.2"}, // index now points to b
			{do: "delete", id: a},
			{do: "claim", id: "epB", net: "n", ip: "10.0.0.2", wantID: b},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			atts := map[string]*Attachment{}
			for i, st := range tc.steps {
				switch st.do {
				case "pending":
					x := att(st.id, st.net, PhasePending, st.ip+"/24")
					x.PoolID = "cniplug-pool"
					if err := s.PutAttachment(x); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					atts[st.id] = x
				case "delete":
					cur, err := s.Attachment(st.id)
					if err != nil {
						t.Fatalf("step %d: reading %s: %v", i, st.id, err)
					}
					if err := s.DeleteAttachment(cur); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				case "claim":
					got, err := s.ClaimPending(st.net, st.ip, "dnet", st.id)
					if !errors.Is(err, st.wantErr) || (st.wantErr == nil && err != nil) {
						t.Fatalf("step %d: ClaimPending(%s, %s) err = %v, want %v", i, st.net, st.ip, err, st.wantErr)
					}
					if err != nil {
						continue
					}
					if got.ID() != st.wantID || got.Phase != PhaseEndpoint || got.EndpointID != st.id || got.NetworkID != "dnet" {
						t.Fatalf("step %d: claimed %s phase %q endpoint %q network %q; want %s endpoint %q", i,
							got.ID(), got.Phase, got.EndpointID, got.NetworkID, st.wantID, st.id)
					}
					if got.PoolID != "cniplug-pool" || got.Interface.IPv4 != st.ip+"/24" {
						t.Fatalf("step %d: claim lost the attachment's data: %+v", i, got)
					}
					stored, err := s.AttachmentByEndpoint(st.id)
					if err != nil || !reflect.DeepEqual(stored, got) {
						t.Fatalf("step %d: stored claimed attachment = %+v, %v; want %+v", i, stored, err, got)
					}
				case "release":
					got, err := s.TakeRelease(st.net, st.ip)
					if !errors.Is(err, st.wantErr) || (st.wantErr == nil && err != nil) {
						t.Fatalf("step %d: TakeRelease(%s, %s) err = %v, want %v", i, st.net, st.ip, err, st.wantErr)
					}
					gotID := ""
					if got != nil {
						gotID = got.ID()
					}
					if gotID != st.wantID {
						t.Fatalf("step %d: TakeRelease(%s, %s) returned attachment %q, want %q", i, st.net, st.ip, gotID, st.wantID)
					}
					if got != nil && !reflect.DeepEqual(got, atts[st.wantID]) {
						t.Fatalf("step %d: TakeRelease returned %+v, want %+v", i, got, atts[st.wantID])
					}
				default:
					t.Fatalf("bad step %q", st.do)
				}
			}
		})
	}
}

func TestDurableAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	nw := &Network{ID: "dnet", CNIName: "n", Conflist: []byte(`{"name":"n"}`), Mode: ModeCNIIPAM, IPv4Pool: "10.0.0.0/24",
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	pool := &Pool{ID: "cniplug-p", CNIName: "n", Conflist: []byte(`{"name":"n"}`), CIDR: "10.0.0.0/24"}
	claimed := att("dddddddddddd0001", "n", PhasePending, "10.0.0.2/24")
	pending := att("dddddddddddd0002", "n", PhasePending, "10.0.0.3/24")
	for _, err := range []error{s.PutNetwork(nw), s.PutPool(pool), s.PutAttachment(claimed), s.PutAttachment(pending)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ClaimPending("n", "10.0.0.2", "dnet", "ep1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir)
	if got, err := s.Network("dnet"); err != nil || !reflect.DeepEqual(got, nw) {
		t.Fatalf("Network after reopen = %+v, %v", got, err)
	}
	if got, err := s.Pool("cniplug-p"); err != nil || !reflect.DeepEqual(got, pool) {
		t.Fatalf("Pool after reopen = %+v, %v", got, err)
	}
	atts, err := s.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range atts {
		ids = append(ids, a.ID()+"/"+string(a.Phase))
	}
	sort.Strings(ids)
	if want := []string{"dddddddddddd0001/endpoint", "dddddddddddd0002/pending"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("attachments after reopen = %v, want %v", ids, want)
	}
	// The indexes and the owed-release count survived too.
	if got, err := s.AttachmentByEndpoint("ep1"); err != nil || got.ID() != claimed.ID() {
		t.Fatalf("endpoint index after reopen = %v, %v", got, err)
	}
	if got, err := s.TakeRelease("n", "10.0.0.2"); err != nil || got != nil {
		t.Fatalf("release owed to the claimed address after reopen = %v, %v; want nil, nil", got, err)
	}
	if got, err := s.ClaimPending("n", "10.0.0.3", "dnet", "ep2"); err != nil || got.ID() != pending.ID() {
		t.Fatalf("pending index after reopen = %v, %v", got, err)
	}
}

func TestOpenIsExclusive(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 5s lock timeout")
	}
	dir := t.TempDir()
	openStore(t, dir)
	start := time.Now()
	s, err := Open(dir)
	if err == nil {
		s.Close()
		t.Fatal("a second Open of a held store succeeded")
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("second Open took %s to fail", time.Since(start))
	}
}

func TestModeOf(t *testing.T) {
	tests := []struct {
		space string
		want  AddressMode
	}{
		{"CniplugLocal", ModeCNIIPAM},
		{"CniplugGlobal", ModeCNIIPAM},
		{"null", ModeNull},
		{"LocalDefault", ModeDocker},
		{"GlobalDefault", ModeDocker},
		{"SomeOtherIPAMsSpace", ModeDocker},
		{"", ModeDocker},
	}
	for _, tc := range tests {
		if got := ModeOf(tc.space); got != tc.want {
			t.Errorf("ModeOf(%q) = %q, want %q", tc.space, got, tc.want)
		}
	}
}

// Warm attachments are indexed by pool: ClaimWarm takes each once (as pending under its address, with the
// endpoint's MAC), by address when one is asked for, never another pool's; deleting or claiming one drops it
// from the count.
func TestClaimWarm(t *testing.T) {
	s := openStore(t, t.TempDir())
	warm := func(id, pool, ip string) *Attachment {
		a := att(id, "cni", PhaseWarm, ip)
		a.PoolID = pool
		if err := s.PutAttachment(a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	count := func(pool string, want int) {
		t.Helper()
		if n, err := s.WarmCount(pool); err != nil || n != want {
			t.Fatalf("WarmCount(%s) = %d, %v; want %d", pool, n, err, want)
		}
	}
	a1 := warm("a1aaaaaaaaaaaaaa", "p1", "10.0.0.2/24")
	warm("a2aaaaaaaaaaaaaa", "p1", "10.0.0.3/24")
	other := warm("b1bbbbbbbbbbbbbb", "p10", "10.0.0.4/24") // a pool ID the first is a prefix of
	count("p1", 2)
	count("p10", 1)

	if _, err := s.ClaimWarm("p1", "10.0.0.4", "02:00:00:00:00:01"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claiming another pool's address: %v, want ErrNotFound", err)
	}
	got, err := s.ClaimWarm("p1", "10.0.0.3", "02:00:00:00:00:01")
	if err != nil || got.ID() != "a2aaaaaaaaaaaaaa" || got.Phase != PhasePending || got.RequestMAC != "02:00:00:00:00:01" {
		t.Fatalf("ClaimWarm by address = %+v, %v", got, err)
	}
	if !got.Created.After(a1.Created) {
		t.Errorf("a claimed attachment keeps its warm creation time %s: reconciliation would take it for an old unclaimed one", got.Created)
	}
	count("p1", 1)
	// Now pending under its address, as an ADD at RequestAddress would leave it.
	if claimed, err := s.ClaimPending("cni", "10.0.0.3", "net", "ep"); err != nil || claimed.ID() != got.ID() {
		t.Fatalf("ClaimPending of the claimed warm address = %+v, %v", claimed, err)
	}
	got, err = s.ClaimWarm("p1", "", "02:00:00:00:00:02")
	if err != nil || got.ID() != a1.ID() {
		t.Fatalf("ClaimWarm = %+v, %v; want %s", got, err, a1.ID())
	}
	if _, err := s.ClaimWarm("p1", "", "02:00:00:00:00:03"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claiming from an empty pool: %v, want ErrNotFound", err)
	}
	count("p1", 0)
	if err := s.DeleteAttachment(other); err != nil {
		t.Fatal(err)
	}
	count("p10", 0)
}

// TestInstance: a new store gets a random tag, kept across reopening; a store that holds records when it
// first gets one (an earlier cniplug's) keeps the legacy tag; two new stores get different tags.
func TestInstance(t *testing.T) {
	dirA, dirB, dirOld := t.TempDir(), t.TempDir(), t.TempDir()
	tag := func(dir string) string {
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		got, err := s.Instance("legacy")
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	a := tag(dirA)
	if a == "legacy" || len(a) != 6 {
		t.Errorf("a new store's tag is %q, want 6 random hex digits", a)
	}
	if again := tag(dirA); again != a {
		t.Errorf("the tag changed on reopening: %q then %q", a, again)
	}
	if b := tag(dirB); b == a {
		t.Errorf("two new stores got the same tag %q", a)
	}
	old, err := Open(dirOld)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.PutNetwork(&Network{ID: "n1"}); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if got := tag(dirOld); got != "legacy" {
		t.Errorf("a store with records got tag %q, want the legacy one", got)
	}
}
