//go:build !linux

package p0f

import (
	"errors"
	"net"
	"syscall"
)

var errUnsupported = errors.New("p0f: saved SYN needs Linux")

// SaveSYNControl is only supported on Linux; elsewhere it does nothing.
func SaveSYNControl(network, address string, c syscall.RawConn) error { return nil }

// SavedSYN is only supported on Linux.
func SavedSYN(c *net.TCPConn) ([]byte, error) { return nil, errUnsupported }
