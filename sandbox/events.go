package sandbox

import (
	"sync"
	"time"
)

// EventType is what happened to a container.
type EventType int

const (
	ContainerCreatedEvent EventType = iota
	ContainerStartedEvent
	ContainerStoppedEvent
	ContainerDeletedEvent
)

// Event is one container lifecycle change, for kubelet's evented PLEG.
type Event struct {
	Type        EventType
	ContainerID string
	SandboxID   string
	At          time.Time
	// Container is the container as it was right after the change.
	Container Container
}

const eventQueue = 1024

// events fans lifecycle events out to subscribers. A subscriber that falls
// more than eventQueue events behind loses events: kubelet relists anyway.
type events struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

// Subscribe delivers events until cancel is called.
func (m *Manager) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, eventQueue)
	m.events.mu.Lock()
	if m.events.subs == nil {
		m.events.subs = map[chan Event]struct{}{}
	}
	m.events.subs[ch] = struct{}{}
	m.events.mu.Unlock()
	return ch, func() {
		m.events.mu.Lock()
		if _, ok := m.events.subs[ch]; ok {
			delete(m.events.subs, ch)
			close(ch)
		}
		m.events.mu.Unlock()
	}
}

// emit publishes an event about c, as it was right after the change.
// It is called under the container's lock, so each container's events
// arrive in order.
func (m *Manager) emit(t EventType, c Container) {
	e := Event{Type: t, ContainerID: c.ID, SandboxID: c.SandboxID, At: time.Now(), Container: c}
	m.events.mu.Lock()
	defer m.events.mu.Unlock()
	for ch := range m.events.subs {
		select {
		case ch <- e:
		default:
			m.log.Warn("container event dropped: subscriber too slow", "container", c.ID)
		}
	}
}
