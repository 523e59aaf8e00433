//go:build !linux

package smtpd

import (
	"net"
	"syscall"
)

func enableSaveSYN(net.Listener) error { return nil }

func savedSYN(net.Conn) []byte { return nil }

func listenControl(network, address string, rc syscall.RawConn) error { return nil }
