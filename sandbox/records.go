package sandbox

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var (
	bucketSandboxes  = []byte("sandboxes")
	bucketContainers = []byte("containers")
)

// records persists sandboxes and containers in bbolt: one JSON record per
// object, with the CRI config as protobuf bytes so every field of it
// (metadata, labels, annotations) round-trips exactly. Only update.go
// writes them.
type records struct {
	db     *bolt.DB
	writes groupCommit
}

type sandboxRecord struct {
	Sandbox
	Config []byte `json:"config"`
}

type containerRecord struct {
	Container
	Config []byte `json:"config"`
}

func newRecords(db *bolt.DB) (*records, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSandboxes, bucketContainers} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	return &records{db: db, writes: groupCommit{db: db}}, err
}

func (s *records) putSandbox(sb *Sandbox) error {
	cfg, err := proto.Marshal(sb.Config)
	if err != nil {
		return err
	}
	return s.put(bucketSandboxes, sb.ID, sandboxRecord{Sandbox: *sb, Config: cfg})
}

func (s *records) putContainer(c *Container) error {
	cfg, err := proto.Marshal(c.Config)
	if err != nil {
		return err
	}
	return s.put(bucketContainers, c.ID, containerRecord{Container: *c, Config: cfg})
}

func (s *records) put(bucket []byte, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.writes.update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(id), b) })
}

func (s *records) delete(bucket []byte, id string) error {
	return s.writes.update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(id)) })
}

// load reads everything back, as the daemon does at start-up.
func (s *records) load() ([]*Sandbox, []*Container, error) {
	var sandboxes []*Sandbox
	var containers []*Container
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
			var r sandboxRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("sandbox %s: %w", k, err)
			}
			r.Sandbox.Config = &runtimeapi.PodSandboxConfig{}
			if err := proto.Unmarshal(r.Config, r.Sandbox.Config); err != nil {
				return fmt.Errorf("sandbox %s config: %w", k, err)
			}
			sandboxes = append(sandboxes, &r.Sandbox)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketContainers).ForEach(func(k, v []byte) error {
			var r containerRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("container %s: %w", k, err)
			}
			r.Container.Config = &runtimeapi.ContainerConfig{}
			if err := proto.Unmarshal(r.Config, r.Container.Config); err != nil {
				return fmt.Errorf("container %s config: %w", k, err)
			}
			containers = append(containers, &r.Container)
			return nil
		})
	})
	return sandboxes, containers, err
}
