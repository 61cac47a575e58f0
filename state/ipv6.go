package state

import (
	"errors"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// ErrAmbiguous: several pending attachments could be the one an IPv6 address request without a MAC is for.
var ErrAmbiguous = errors.New("ambiguous")

// TakePendingV6 finds the pending attachment on CNI network cniName that Docker's IPv4 RequestAddress created
// for the endpoint with this MAC, and marks its IPv6 address as handed out. Docker sends the same MAC with
// both of an endpoint's RequestAddress calls (cniplug IPAM requires one), so the pairing is exact even when
// containers start in parallel. With several candidates (a MAC given twice with --mac-address) the newest
// untaken one is used. ErrNotFound when there is none.
//
// Without a MAC (a dockerd that activated an older cniplug caches its IPAM capabilities until it restarts),
// the only safe pairing is an unambiguous one: an endpoint's IPv6 request always follows its own IPv4
// request, so its attachment is always a candidate, and when it is the only candidate it is the right one.
// With several candidates ErrAmbiguous is returned rather than a guess.
func (s *Store) TakePendingV6(cniName, mac string) (*Attachment, error) {
	var found *Attachment
	candidates := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		pending := tx.Bucket(bucketPending)
		err := pending.ForEach(func(k, id []byte) error {
			if !strings.HasPrefix(string(k), cniName+"/") {
				return nil
			}
			a := &Attachment{}
			if err := get(tx, bucketAttachments, string(id), a); err != nil {
				return nil
			}
			if a.Phase != PhasePending || a.V6Taken || (mac != "" && !strings.EqualFold(a.RequestMAC, mac)) || a.Network != cniName {
				return nil
			}
			candidates++
			if found == nil || a.Created.After(found.Created) {
				found = a
			}
			return nil
		})
		if err != nil {
			return err
		}
		if found == nil {
			return ErrNotFound
		}
		if mac == "" && candidates > 1 {
			return ErrAmbiguous
		}
		found.V6Taken = true
		return putAttachment(tx, found)
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}
