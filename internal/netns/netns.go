// Package netns makes, enters and removes named network namespaces: each
// is a file a fresh namespace is bind-mounted on, so it lives on with no
// process in it, as `ip netns add` and containerd make theirs.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Create makes a new network namespace and pins it at dir/name, which must
// not exist. Nothing but its loopback (down) is in it.
func Create(dir, name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("network namespace name %q is not a plain file name", name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o444)
	if err != nil {
		return "", fmt.Errorf("create network namespace file: %w", err)
	}
	f.Close()
	// thread-self, not self/task/<tid>: this process may see another pid
	// namespace's /proc.
	err = away(func() error { return unix.Unshare(unix.CLONE_NEWNET) }, func() error {
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("pin the network namespace at %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// Remove unpins the namespace at path and removes its file; an absent one
// is no error. The namespace itself goes once nothing else holds it.
func Remove(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// IsPinned says whether path holds a network namespace.
func IsPinned(path string) bool {
	var fs unix.Statfs_t
	// A pinned namespace is an nsfs inode mounted over the file.
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}

// Do runs fn on an OS thread inside the namespace at path, then returns
// the thread to the namespace it came from. What fn makes there (a socket,
// a link) stays in the namespace.
func Do(path string, fn func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer unix.Close(target)
	return away(func() error { return unix.Setns(target, unix.CLONE_NEWNET) }, fn)
}

// away runs work on a locked OS thread that enter has moved to another
// network namespace, then moves the thread home. Go may pick the process's
// main thread, which can never end: no thread may stay behind. One that
// cannot go home stays locked, and ends with its goroutine (or, the main
// thread, is parked for good) rather than serve others from elsewhere.
func away(enter, work func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(home)
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter the network namespace: %w", err)
			return
		}
		werr := work()
		if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(werr, fmt.Errorf("return to this thread's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- werr
	}()
	return <-errc
}

// List names the files in dir (namespaces pinned there, or files a crash
// left before pinning one); a missing dir holds none.
func List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}
