//go:build wasip1

package main

import "syscall"

// errNotCapable is WASI's refusal of an operation the preopen forbids.
const errNotCapable = syscall.ENOTCAPABLE
