//go:build unix

package clamd

import (
	"errors"
	"net"
	"syscall"
)

// alive reports whether an idle connection is still usable: clamd has not
// closed it (IdleTimeout, restart) and sent nothing unexpected. One
// non-blocking peek, no waiting.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var buf [1]byte
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		return false
	}
	if rerr != nil {
		return errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK)
	}
	return false // EOF, or unexpected bytes: the session is out of step
}
