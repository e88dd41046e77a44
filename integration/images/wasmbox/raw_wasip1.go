//go:build wasip1

package main

import (
	"syscall"
	"unsafe"
)

// rootFD is the first preopen, which wasmcri makes the container's root.
const rootFD = 3

//go:wasmimport wasi_snapshot_preview1 path_rename
func pathRename(fd int32, oldPath *byte, oldLen uint32, newFd int32, newPath *byte, newLen uint32) uint32

//go:wasmimport wasi_snapshot_preview1 path_symlink
func pathSymlink(oldPath *byte, oldLen uint32, fd int32, newPath *byte, newLen uint32) uint32

// rawRename renames old to new, both relative to the root's descriptor,
// as a program making its own WASI calls can: Go's os package would pick
// the longest preopen instead, and never reach a root entry that another
// preopen covers.
func rawRename(old, new string) error {
	if e := pathRename(rootFD, unsafe.StringData(old), uint32(len(old)), rootFD, unsafe.StringData(new), uint32(len(new))); e != 0 {
		return syscall.Errno(e)
	}
	return nil
}

// rawSymlink makes link (relative to the root's descriptor) point at target.
func rawSymlink(target, link string) error {
	if e := pathSymlink(unsafe.StringData(target), uint32(len(target)), rootFD, unsafe.StringData(link), uint32(len(link))); e != 0 {
		return syscall.Errno(e)
	}
	return nil
}
