// Package state is cniplug's one durable store: Docker networks, IPAM pools and CNI attachments, kept in a
// bbolt file so they survive plugin restarts and crashes (every write is an fsynced transaction).
package state

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cniplug/cniplug/naming"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketNetworks    = []byte("networks")
	bucketPools       = []byte("pools")
	bucketAttachments = []byte("attachments")
	bucketEndpoints   = []byte("endpoints") // endpoint ID -> attachment ID
	bucketPending     = []byte("pending")   // cniName/ip -> attachment ID, for addresses not yet claimed
	bucketReleases    = []byte("releases")  // cniName/ip -> count of ReleaseAddress calls owed to claimed addresses
	bucketWarm        = []byte("warm")      // poolID/attachment ID -> "", for warm attachments no request took yet
	bucketMeta        = []byte("meta")      // store-wide values: the instance tag
)

// ErrNotFound is returned for missing records.
var ErrNotFound = errors.New("not found")

// Store is the bbolt-backed state store.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the store in dir. Only one process may hold it.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	path := filepath.Join(dir, "cniplug.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening state store %s (is another cniplug running?): %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketNetworks, bucketPools, bucketAttachments, bucketEndpoints, bucketPending, bucketReleases, bucketWarm, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialising state store: %w", err)
	}
	return &Store{db: db}, nil
}

// Instance returns the tag that tells this store's cniplug apart from any other on the host (its firewall
// chains carry it). It is made once, at random, with the store: a managed plugin sees its state dir as
// /var/lib/cniplug whatever the host path, so a tag derived from the path would be the same as a host plugin's
// using /var/lib/cniplug, and the two would rewrite each other's chains. A store that already holds records
// when it first gets a tag (made by an earlier cniplug) keeps legacy, the tag that cniplug used.
func (s *Store) Instance(legacy string) (string, error) {
	var tag string
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get([]byte("instance")); v != nil {
			tag = string(v)
			return nil
		}
		tag = legacy
		if isEmpty(tx, bucketNetworks) && isEmpty(tx, bucketPools) && isEmpty(tx, bucketAttachments) {
			b := make([]byte, 3)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			tag = hex.EncodeToString(b)
		}
		return meta.Put([]byte("instance"), []byte(tag))
	})
	if err != nil {
		return "", fmt.Errorf("reading the instance tag from the state store: %w", err)
	}
	return tag, nil
}

func isEmpty(tx *bolt.Tx, bucket []byte) bool {
	k, _ := tx.Bucket(bucket).Cursor().First()
	return k == nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// PutNetwork records a network.
func (s *Store) PutNetwork(n *Network) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx, bucketNetworks, n.ID, n) })
}

// Network returns the network with the given Docker ID.
func (s *Store) Network(id string) (*Network, error) {
	n := &Network{}
	err := s.db.View(func(tx *bolt.Tx) error { return get(tx, bucketNetworks, id, n) })
	return n, err
}

// Networks lists every network.
func (s *Store) Networks() ([]*Network, error) { return list[Network](s.db, bucketNetworks) }

// DeleteNetwork removes a network record.
func (s *Store) DeleteNetwork(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketNetworks).Delete([]byte(id)) })
}

// PutPool records a pool.
func (s *Store) PutPool(p *Pool) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx, bucketPools, p.ID, p) })
}

// Pool returns the pool with the given ID.
func (s *Store) Pool(id string) (*Pool, error) {
	p := &Pool{}
	err := s.db.View(func(tx *bolt.Tx) error { return get(tx, bucketPools, id, p) })
	return p, err
}

// Pools lists every pool.
func (s *Store) Pools() ([]*Pool, error) { return list[Pool](s.db, bucketPools) }

// DeletePool removes a pool record.
func (s *Store) DeletePool(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPools).Delete([]byte(id)) })
}

// PutAttachment records an attachment and keeps the endpoint and pending-address indexes in step with it.
func (s *Store) PutAttachment(a *Attachment) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putAttachment(tx, a) })
}

func putAttachment(tx *bolt.Tx, a *Attachment) error {
	a.Updated = time.Now().UTC()
	if err := put(tx, bucketAttachments, a.ID(), a); err != nil {
		return err
	}
	if a.EndpointID != "" {
		if err := tx.Bucket(bucketEndpoints).Put([]byte(a.EndpointID), []byte(a.ID())); err != nil {
			return err
		}
	}
	if a.Phase == PhaseWarm {
		if err := tx.Bucket(bucketWarm).Put(warmKey(a), nil); err != nil {
			return err
		}
	} else if err := tx.Bucket(bucketWarm).Delete(warmKey(a)); err != nil {
		return err
	}
	if a.Phase == PhasePending {
		return tx.Bucket(bucketPending).Put([]byte(addressKey(a.Network, naming.Address(a.Interface.IPv4))), []byte(a.ID()))
	}
	return nil
}

// ClaimWarm takes one warm attachment of the pool for a RequestAddress: it becomes pending under its address,
// asked for by the endpoint's MAC, in one transaction, so two requests never take the same one. address, when
// set, takes only the warm attachment holding that address. It fails with ErrNotFound when none is warm. Its
// creation time becomes the claim's: reconciliation measures a pending attachment's age from the request.
func (s *Store) ClaimWarm(poolID, address, mac string) (*Attachment, error) {
	var a *Attachment
	err := s.db.Update(func(tx *bolt.Tx) error {
		prefix := []byte(poolID + "/")
		c := tx.Bucket(bucketWarm).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			cand := &Attachment{}
			if err := get(tx, bucketAttachments, string(k[len(prefix):]), cand); err != nil {
				return fmt.Errorf("warm attachment %s: %w", k[len(prefix):], err)
			}
			if address == "" || naming.Address(cand.Interface.IPv4) == naming.Address(address) {
				a = cand
				break
			}
		}
		if a == nil {
			return ErrNotFound
		}
		a.Phase, a.RequestMAC, a.Created = PhasePending, mac, time.Now().UTC()
		return putAttachment(tx, a)
	})
	return a, err
}

// WarmCount is the number of warm attachments of the pool.
func (s *Store) WarmCount(poolID string) (int, error) {
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(poolID + "/")
		c := tx.Bucket(bucketWarm).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// ClaimPending moves the pending attachment holding ip on CNI network cniName to an endpoint, and records
// that Docker still owes a ReleaseAddress for that address. It fails with ErrNotFound when none is pending.
func (s *Store) ClaimPending(cniName, ip, networkID, endpointID string) (*Attachment, error) {
	a := &Attachment{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		key := []byte(addressKey(cniName, ip))
		id := tx.Bucket(bucketPending).Get(key)
		if id == nil {
			return ErrNotFound
		}
		if err := get(tx, bucketAttachments, string(id), a); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPending).Delete(key); err != nil {
			return err
		}
		if err := addRelease(tx, key, 1); err != nil {
			return err
		}
		a.Phase, a.NetworkID, a.EndpointID = PhaseEndpoint, networkID, endpointID
		return putAttachment(tx, a)
	})
	return a, err
}

func addRelease(tx *bolt.Tx, key []byte, delta int) error {
	b := tx.Bucket(bucketReleases)
	n := 0
	if v := b.Get(key); v != nil {
		_ = json.Unmarshal(v, &n)
	}
	n += delta
	if n <= 0 {
		return b.Delete(key)
	}
	data, _ := json.Marshal(n)
	return b.Put(key, data)
}

// TakeRelease decides what a ReleaseAddress of ip on cniName means: if an endpoint claimed that address, the
// release is the one Docker owes it (consumed, nothing pending returned); otherwise it returns the pending
// attachment (or ErrNotFound) for the caller to tear down.
func (s *Store) TakeRelease(cniName, ip string) (*Attachment, error) {
	var pending *Attachment
	err := s.db.Update(func(tx *bolt.Tx) error {
		key := []byte(addressKey(cniName, ip))
		if tx.Bucket(bucketReleases).Get(key) != nil {
			return addRelease(tx, key, -1)
		}
		id := tx.Bucket(bucketPending).Get(key)
		if id == nil {
			return ErrNotFound
		}
		pending = &Attachment{}
		return get(tx, bucketAttachments, string(id), pending)
	})
	return pending, err
}

// Attachment returns an attachment by ID.
func (s *Store) Attachment(id string) (*Attachment, error) {
	a := &Attachment{}
	err := s.db.View(func(tx *bolt.Tx) error { return get(tx, bucketAttachments, id, a) })
	return a, err
}

// AttachmentByEndpoint returns the attachment owned by a Docker endpoint.
func (s *Store) AttachmentByEndpoint(endpointID string) (*Attachment, error) {
	a := &Attachment{}
	err := s.db.View(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketEndpoints).Get([]byte(endpointID))
		if id == nil {
			return ErrNotFound
		}
		return get(tx, bucketAttachments, string(id), a)
	})
	return a, err
}

// Attachments lists every attachment.
func (s *Store) Attachments() ([]*Attachment, error) {
	return list[Attachment](s.db, bucketAttachments)
}

// DeleteAttachment removes an attachment and its index entries.
func (s *Store) DeleteAttachment(a *Attachment) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if a.EndpointID != "" {
			if id := tx.Bucket(bucketEndpoints).Get([]byte(a.EndpointID)); string(id) == a.ID() {
				if err := tx.Bucket(bucketEndpoints).Delete([]byte(a.EndpointID)); err != nil {
					return err
				}
			}
		}
		if err := tx.Bucket(bucketWarm).Delete(warmKey(a)); err != nil {
			return err
		}
		key := []byte(addressKey(a.Network, naming.Address(a.Interface.IPv4)))
		if id := tx.Bucket(bucketPending).Get(key); string(id) == a.ID() {
			if err := tx.Bucket(bucketPending).Delete(key); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketAttachments).Delete([]byte(a.ID()))
	})
}
