//go:build linux

package smtpd

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"moat.dev/moat/internal/p0f"
)

// enableSaveSYN asks the kernel to keep each incoming SYN on a listener
// that already listens. Linux accepts TCP_SAVE_SYN only before listen(2),
// so this usually fails (harmlessly); ListenAndServe uses listenControl.
func enableSaveSYN(ln net.Listener) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_SAVE_SYN, 1)
	}); err != nil {
		return err
	}
	return serr
}

// listenControl sets TCP_SAVE_SYN before listen(2), so no connection misses
// it. Failure is not an error: the fingerprint then degrades to unknown.
func listenControl(network, address string, rc syscall.RawConn) error {
	p0f.SaveSYNControl(network, address, rc)
	return nil
}

// savedSYN returns the client's saved SYN, or nil when unavailable.
func savedSYN(c net.Conn) []byte {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	syn, err := p0f.SavedSYN(tc)
	if err != nil {
		return nil
	}
	return syn
}
