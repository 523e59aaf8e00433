//go:build linux

package smtpd

import (
	"net"
	"syscall"
	"unsafe"
)

// Linux TCP socket options (include/uapi/linux/tcp.h).
const (
	tcpSaveSYN  = 27 // TCP_SAVE_SYN: keep the SYN of connections accepted on this listener
	tcpSavedSYN = 28 // TCP_SAVED_SYN: read it (once) from the accepted socket
)

// enableSaveSYN asks the kernel to keep each incoming SYN (IP and TCP
// headers) for p0f-style fingerprinting. Failure is not an error.
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
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpSaveSYN, 1)
	}); err != nil {
		return err
	}
	return serr
}

// listenControl sets TCP_SAVE_SYN on a listening socket before listen(2),
// so no early connection misses it.
func listenControl(network, address string, rc syscall.RawConn) error {
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpSaveSYN, 1)
	})
	return nil
}

// savedSYN returns the client's saved SYN, or nil when unavailable.
func savedSYN(c net.Conn) []byte {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var out []byte
	rc.Control(func(fd uintptr) {
		buf := make([]byte, 512)
		l := uint32(len(buf))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, tcpSavedSYN,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e == 0 && l > 0 && int(l) <= len(buf) {
			out = buf[:l:l]
		}
	})
	return out
}
