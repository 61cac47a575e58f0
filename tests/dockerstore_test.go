package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// storedEndpoints reads, from dockerd's own local store, how many endpoints of a network it holds and the
// endpoint count it keeps beside them. Docker before 28.1 refuses `docker network rm` ("has active
// endpoints") by that count alone, and 20.10 miscounts when many endpoints of one network are created and
// removed at once, with its own bridge driver too (moby/moby#42119): the count stays above zero with no
// endpoint left until dockerd restarts and recounts. Only the store tells that apart from an endpoint
// Docker really kept (one whose driver's DeleteEndpoint failed).
func storedEndpoints(networkID string) (endpoints int, count uint64, err error) {
	out, err := dockerErr("info", "-f", "{{.DockerRootDir}}")
	if err != nil {
		return 0, 0, fmt.Errorf("docker info: %v: %s", err, out)
	}
	db, err := bolt.Open(filepath.Join(out, "network", "files", "local-kv.db"), 0o600,
		&bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	endpointPrefix := []byte("docker/network/v1.0/endpoint/" + networkID + "/")
	countKey := "docker/network/v1.0/endpoint_count/" + networkID + "/"
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("libnetwork"))
		if b == nil {
			return fmt.Errorf("no libnetwork bucket in dockerd's store")
		}
		c := b.Cursor()
		for k, _ := c.Seek(endpointPrefix); k != nil && bytes.HasPrefix(k, endpointPrefix); k, _ = c.Next() {
			endpoints++
		}
		// libkv puts an 8-byte index before the JSON value.
		v := b.Get([]byte(countKey))
		if i := bytes.IndexByte(v, '{'); i >= 0 {
			var ec struct{ Count uint64 }
			if err := json.Unmarshal(v[i:], &ec); err != nil {
				return fmt.Errorf("endpoint count of %s: %w", networkID, err)
			}
			count = ec.Count
		}
		return nil
	})
	return endpoints, count, err
}

// dockerMiscounted reports whether dockerd refuses to remove network name only because of a stale endpoint
// count (see storedEndpoints), and says so.
func dockerMiscounted(name string) (bool, string) {
	id, err := dockerErr("network", "inspect", "-f", "{{.Id}}", name)
	if err != nil {
		return false, ""
	}
	endpoints, count, err := storedEndpoints(strings.TrimSpace(id))
	if err != nil || endpoints > 0 || count == 0 {
		return false, ""
	}
	return true, fmt.Sprintf("dockerd's store holds no endpoint of network %s but counts %d (moby/moby#42119)", name, count)
}
