// Command hello is the example WASI program of wasmcri: the demo runs it in a
// pod, and the tests use its modes to make a module behave as they need.
//
//	hello [args...]         print args, environment and working directory
//	hello sleep-forever     print a tick every 100ms until stopped
//	hello spin              loop without ever calling the host
//	hello exit N            exit with code N
//	hello write FILE TEXT   write TEXT into FILE and print it back
//	hello alloc MIB         hold MIB mebibytes of memory, then sleep
//	hello alloc-slowly      take one more MiB every 10ms, forever
//	hello alloc-once MIB    take MIB mebibytes in one allocation
//	hello cat FILE...       print files
//	hello echo-stdin        copy standard input to standard output
//	hello long-line N       print one line of N characters
//	hello lines N           print N numbered lines as fast as it can
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"
)

func main() {
	args := os.Args[1:]
	mode := ""
	if len(args) > 0 {
		mode = args[0]
	}
	switch mode {
	case "sleep-forever":
		for i := 0; ; i++ {
			fmt.Println("tick", i)
			time.Sleep(100 * time.Millisecond)
		}
	case "spin":
		fmt.Println("spinning")
		n := 0
		for {
			n++
		}
	case "exit":
		code := 0
		if len(args) > 1 {
			code, _ = strconv.Atoi(args[1])
		}
		fmt.Fprintf(os.Stderr, "exiting with %d\n", code)
		os.Exit(code)
	case "write":
		if len(args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: hello write FILE TEXT")
			os.Exit(2)
		}
		if err := os.WriteFile(args[1], []byte(args[2]), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "write:", err)
			os.Exit(1)
		}
		b, err := os.ReadFile(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "read:", err)
			os.Exit(1)
		}
		fmt.Printf("%s holds %q\n", args[1], b)
	case "alloc":
		mib := 0
		if len(args) > 1 {
			mib, _ = strconv.Atoi(args[1])
		}
		var held [][]byte
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			held = append(held, b)
		}
		fmt.Printf("holding %d MiB\n", len(held))
		for {
			time.Sleep(time.Hour)
		}
	case "alloc-once":
		mib := 0
		if len(args) > 1 {
			mib, _ = strconv.Atoi(args[1])
		}
		b := make([]byte, mib<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		fmt.Printf("holding %d MiB at once\n", mib)
	case "alloc-slowly":
		var held [][]byte
		for i := 1; ; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			held = append(held, b)
			if i%10 == 0 {
				fmt.Printf("holding %d MiB\n", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	case "cat":
		for _, f := range args[1:] {
			b, err := os.ReadFile(f)
			if err != nil {
				fmt.Fprintln(os.Stderr, "cat:", err)
				os.Exit(1)
			}
			os.Stdout.Write(b)
		}
	case "long-line", "lines":
		n := 0
		if len(args) > 1 {
			n, _ = strconv.Atoi(args[1])
		}
		w := bufio.NewWriterSize(os.Stdout, 64<<10)
		if mode == "long-line" {
			for i := 0; i < n; i++ {
				w.WriteByte('a' + byte(i%26))
			}
			w.WriteByte('\n')
		} else {
			for i := 0; i < n; i++ {
				fmt.Fprintf(w, "line %d\n", i)
			}
		}
		w.Flush()
	case "echo-stdin":
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, "echo-stdin:", err)
			os.Exit(1)
		}
	default:
		fmt.Println("Hello from WebAssembly!")
		fmt.Printf("args: %q\n", os.Args)
		env := os.Environ()
		sort.Strings(env)
		for _, kv := range env {
			fmt.Println("env:", kv)
		}
		wd, _ := os.Getwd()
		fmt.Println("cwd:", wd)
		fmt.Fprintln(os.Stderr, "this line went to stderr")
	}
}
