//go:build !wasip1

package main

import "errors"

var errNotWasm = errors.New("raw WASI calls need GOOS=wasip1")

func rawRename(old, new string) error { return errNotWasm }

func rawSymlink(target, link string) error { return errNotWasm }
