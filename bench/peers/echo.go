// echo.go: the Go net echo server for bench/run.py.
//
// A goroutine per connection copying bytes back with a 64 KiB buffer
// (io.CopyBuffer), which is how Go servers are usually written; the Go
// runtime multiplexes goroutines over epoll. TCP_NODELAY is Go's default.
//
// Usage: echo HOST PORT   (PORT 0 picks a free port)
// Prints "listening HOST:PORT" on stdout once bound.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s HOST PORT\n", os.Args[0])
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(os.Args[1], os.Args[2]))
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			// Temporary errors (EMFILE) are retried; Go's own http.Server
			// backs off, this benchmark server just tries again.
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			buf := make([]byte, 64*1024)
			io.CopyBuffer(c, c, buf)
		}(conn)
	}
}
