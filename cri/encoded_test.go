package cri

import (
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// An answer of encoded entries decodes to the messages themselves; an
// entry follows its object's version; objects gone are forgotten, and a
// filtered listing keeps nothing.
func TestEntryCache(t *testing.T) {
	c := newEntryCache[string]()
	pod := func(id string, state runtimeapi.PodSandboxState) *runtimeapi.PodSandbox {
		return &runtimeapi.PodSandbox{Id: id, State: state, CreatedAt: 42, RuntimeHandler: "wasmtime",
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod-" + id, Namespace: "ns", Uid: id, Attempt: 1},
			Labels:   map[string]string{"app": id}, Annotations: map[string]string{"note": id}}
	}
	// list answers with pods through the cache, and decodes the answer as a
	// client would.
	list := func(all bool, pods ...*runtimeapi.PodSandbox) (encoded int, got *runtimeapi.ListPodSandboxResponse) {
		t.Helper()
		ps := c.begin(all)
		for _, p := range pods {
			if wire, ok := ps.get(p.Id, int32(p.State)); ok {
				ps.wire = append(ps.wire, wire...)
				continue
			}
			encoded++
			start := len(ps.wire)
			var err error
			if ps.wire, err = appendEntry(ps.wire, sandboxItemsField, p); err != nil {
				t.Fatal(err)
			}
			ps.put(p.Id, int32(p.State), ps.wire[start:])
		}
		resp := &runtimeapi.ListPodSandboxResponse{}
		ps.end(resp)
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		got = &runtimeapi.ListPodSandboxResponse{}
		if err := proto.Unmarshal(b, got); err != nil {
			t.Fatal(err)
		}
		if want := (&runtimeapi.ListPodSandboxResponse{Items: pods}); !proto.Equal(got, want) {
			t.Fatalf("decoded %v, want %v", got, want)
		}
		return encoded, got
	}
	ready, notReady := runtimeapi.PodSandboxState_SANDBOX_READY, runtimeapi.PodSandboxState_SANDBOX_NOTREADY

	if n, _ := list(true, pod("a", ready), pod("b", ready), pod("c", ready)); n != 3 {
		t.Errorf("first listing encoded %d, want 3", n)
	}
	if n, _ := list(true, pod("a", ready), pod("b", notReady), pod("c", ready)); n != 1 {
		t.Errorf("after b's change, %d encoded, want 1", n)
	}
	if n, _ := list(false, pod("d", ready), pod("a", ready)); n != 1 {
		t.Errorf("filtered listing encoded %d, want 1 (d)", n)
	}
	if n, _ := list(true, pod("a", ready), pod("c", ready)); n != 0 {
		t.Errorf("with b gone, %d encoded, want 0", n)
	}
	c.mu.Lock()
	_, hasB := c.byID["b"]
	_, hasD := c.byID["d"]
	size := len(c.byID)
	c.mu.Unlock()
	if hasB || hasD || size != 2 {
		t.Errorf("cache holds %d entries (b: %v, d: %v), want a and c", size, hasB, hasD)
	}
	if _, got := list(true); len(got.Items) != 0 {
		t.Errorf("empty listing: %v", got)
	}
}
