package state

import (
	"encoding/json"

	bolt "go.etcd.io/bbolt"
)

func put(tx *bolt.Tx, bucket []byte, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(key), data)
}

func list[T any](db *bolt.DB, bucket []byte) ([]*T, error) {
	var out []*T
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, v []byte) error {
			item := new(T)
			if err := json.Unmarshal(v, item); err != nil {
				return err
			}
			out = append(out, item)
			return nil
		})
	})
	return out, err
}

func get(tx *bolt.Tx, bucket []byte, key string, v any) error {
	data := tx.Bucket(bucket).Get([]byte(key))
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, v)
}

func addressKey(cniName, ip string) string { return cniName + "/" + ip }

func warmKey(a *Attachment) []byte { return []byte(a.PoolID + "/" + a.ID()) }
