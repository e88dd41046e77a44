package sandbox

// Kubelet lists every sandbox, every container and their stats each
// second. These visit the objects in place, each under its own lock, so
// that a listing copies out only what its caller puts in its answer.
// fn runs with the object's lock held: it must be quick, must not call
// back into the Manager, and must not keep the pointers it is given.

// EachSandbox calls fn with every sandbox, oldest first.
func (m *Manager) EachSandbox(fn func(*Sandbox)) {
	for _, sb := range m.sandboxes.all() {
		func() {
			sb.mu.Lock()
			defer sb.mu.Unlock()
			if !sb.removed {
				fn(&sb.Sandbox)
			}
		}()
	}
}

// EachContainer calls fn with every container, oldest first.
func (m *Manager) EachContainer(fn func(*Container)) {
	for _, c := range m.containers.all() {
		func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if !c.removed {
				fn(&c.Container)
			}
		}()
	}
}
