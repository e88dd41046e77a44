package sandbox

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Every change to the set of sandboxes and containers, and to their
// status, goes through this file: the change is made under the object's
// lock, persisted, and only then visible and announced. The lock order is
// sandbox → container → the leaf locks (indexes, names, events).

// changeKind says what a failure to persist a change means.
type changeKind int

const (
	// request is a change asked for (new limits, a stop of a sandbox):
	// one that cannot be persisted is refused and not applied.
	request changeKind = iota
	// fact is a change that has happened (an instance started, ended or
	// failed to start): it holds in memory even if its record cannot be
	// written, and the failure is logged; after a restart the container
	// shows its older record (a running one as ended with the daemon).
	fact
)

// noEvent marks a change kubelet is not told about.
const noEvent EventType = -1

// updateContainerLocked applies change to a copy of c's status, persists
// it (unless c has been removed), makes it c's status and emits ev.
// change refuses by returning an error; it edits only the copy, so a
// refusal changes nothing. c.mu is held.
func (m *Manager) updateContainerLocked(c *containerEntry, kind changeKind, ev EventType, change func(*ContainerStatus) error) error {
	next := c.Container
	if err := change(&next.ContainerStatus); err != nil {
		return err
	}
	if !c.removed {
		if err := m.records.putContainer(&next); err != nil {
			err = fmt.Errorf("persist container %s: %w", c.ID, err)
			if kind == request {
				return err
			}
			m.log.Error("container change not persisted", "container", c.ID, "error", err)
		}
	}
	// Only the status is written: the rest is read without the lock.
	c.ContainerStatus = next.ContainerStatus
	if ev != noEvent && !c.removed {
		m.emit(ev, next)
	}
	return nil
}

// setSandboxStateLocked is the one change a sandbox's status has: a
// state that cannot be persisted is refused. sb.mu is held.
func (m *Manager) setSandboxStateLocked(sb *sandboxEntry, state SandboxState) error {
	return m.updateSandboxLocked(sb, func(next *Sandbox) { next.State = state })
}

// updateSandboxLocked changes a copy of the sandbox, persists it, then
// makes it the sandbox's; sb's lock is held. A change that cannot be
// persisted is not made.
func (m *Manager) updateSandboxLocked(sb *sandboxEntry, change func(*Sandbox)) error {
	next := sb.Sandbox
	change(&next)
	if !sb.removed {
		if err := m.records.putSandbox(&next); err != nil {
			return fmt.Errorf("persist sandbox %s: %w", sb.ID, err)
		}
	}
	sb.Sandbox = next
	return nil
}

// addSandbox persists the new sandbox, whose name its caller reserved,
// and makes it visible.
func (m *Manager) addSandbox(sb *sandboxEntry) error {
	if err := m.records.putSandbox(&sb.Sandbox); err != nil {
		return fmt.Errorf("persist sandbox %s: %w", sb.ID, err)
	}
	m.sandboxes.add(sb.ID, sb)
	return nil
}

// addContainerLocked reserves the new container's name, persists it,
// makes it visible and announces it. The lock of its sandbox is held, and
// the sandbox is ready.
func (m *Manager) addContainerLocked(c *containerEntry) error {
	if other, ok := m.names.reserve(c.Name(), c.ID); !ok {
		return fmt.Errorf("container name %q is taken by container %s: %w", c.Config.GetMetadata().GetName(), other, errdefs.ErrAlreadyExists)
	}
	if err := m.records.putContainer(&c.Container); err != nil {
		m.names.release(c.Name())
		return fmt.Errorf("persist container %s: %w", c.ID, err)
	}
	m.containers.add(c.ID, c)
	m.emit(ContainerCreatedEvent, c.Container)
	return nil
}

// forgetContainerLocked deletes c's record and makes it invisible; a
// second call does nothing. c.mu is held.
func (m *Manager) forgetContainerLocked(c *containerEntry) error {
	if c.removed {
		return nil
	}
	if err := m.records.delete(bucketContainers, c.ID); err != nil {
		return fmt.Errorf("delete the record of container %s: %w", c.ID, err)
	}
	c.removed = true
	m.containers.remove(c.ID)
	m.names.release(c.Name())
	m.usage.forget(c.ID)
	m.emit(ContainerDeletedEvent, c.Container)
	return nil
}

// forgetSandboxLocked is forgetContainerLocked for a sandbox. sb.mu is
// held.
func (m *Manager) forgetSandboxLocked(sb *sandboxEntry) error {
	if sb.removed {
		return nil
	}
	if err := m.records.delete(bucketSandboxes, sb.ID); err != nil {
		return fmt.Errorf("delete the record of sandbox %s: %w", sb.ID, err)
	}
	sb.removed = true
	m.sandboxes.remove(sb.ID)
	m.names.release(sb.Name())
	return nil
}
