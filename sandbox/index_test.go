package sandbox

import (
	"testing"
	"time"
)

// all lists oldest first, and sees every add and remove since the last
// listing.
func TestIndexAllFollowsAddAndRemove(t *testing.T) {
	type obj struct {
		id string
		at time.Time
	}
	t0 := time.Now()
	x := newIndex("obj", func(o *obj) time.Time { return o.at })
	ids := func() (s string) {
		for _, o := range x.all() {
			s += o.id
		}
		return s
	}
	if got := ids(); got != "" {
		t.Errorf("empty index lists %q", got)
	}
	x.add("b", &obj{"b", t0.Add(2)})
	x.add("a", &obj{"a", t0.Add(1)})
	x.add("c", &obj{"c", t0.Add(3)})
	if got := ids(); got != "abc" {
		t.Errorf("got %q, want abc", got)
	}
	before := x.all()
	x.remove("b")
	if got := ids(); got != "ac" {
		t.Errorf("after remove: %q", got)
	}
	x.add("d", &obj{"d", t0})
	if got := ids(); got != "dac" {
		t.Errorf("after add: %q", got)
	}
	// An earlier listing is left as it was.
	if len(before) != 3 || before[1].id != "b" {
		t.Errorf("an earlier listing changed: %v", before)
	}
}
