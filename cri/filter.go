package cri

import (
	"strings"
	"time"
)

// matchLabels is true when labels hold every key=value of selector.
func matchLabels(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// matchID is true for an empty filter, the full ID or a prefix of it
// (crictl passes truncated IDs in filters).
func matchID(filter, id string) bool {
	return filter == "" || strings.HasPrefix(id, filter)
}

// nanos is a time as CRI's int64 nanoseconds, 0 for the zero time.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
