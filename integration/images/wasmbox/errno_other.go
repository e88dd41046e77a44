//go:build !wasip1

package main

import "syscall"

// errNotCapable has no equivalent off WASI; EROFS stands in so the package
// builds (and vets) on the host.
const errNotCapable = syscall.EROFS
