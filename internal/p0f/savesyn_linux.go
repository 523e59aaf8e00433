package p0f

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SaveSYNControl is a net.ListenConfig Control function that asks the
// kernel to keep the SYN of every connection the listener accepts
// (setsockopt TCP_SAVE_SYN, which Linux only accepts before listen());
// read it with SavedSYN.
//
//	lc := net.ListenConfig{Control: p0f.SaveSYNControl}
//	ln, err := lc.Listen(ctx, "tcp", ":25")
func SaveSYNControl(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_SAVE_SYN, 1)
	}); err != nil {
		return err
	}
	return serr
}

// SavedSYN returns the saved SYN (IP header onwards) of an accepted
// connection (getsockopt TCP_SAVED_SYN; the kernel hands it out once).
func SavedSYN(c *net.TCPConn) ([]byte, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 512)
	n := uint32(len(buf))
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_SAVED_SYN,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	}); err != nil {
		return nil, err
	}
	if errno != 0 {
		return nil, errno
	}
	return buf[:n], nil
}
