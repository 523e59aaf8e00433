//go:build unix

package classify

import (
	"fmt"
	"syscall"
)

// readFile reads a whole message file (at most maxItemBytes) with plain
// system calls: open, fstat, read until the size it gave, close. Going
// through os.File costs some six more calls per file (registering with
// the poller, which refuses regular files, and flag changes), and a
// corpus is thousands of small files on machines where calls are dear.
func readFile(name string) ([]byte, error) {
	var fd int
	var err error
	for {
		fd, err = syscall.Open(name, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", name, err)
	}
	size := min(max(st.Size, 0), maxItemBytes)
	// One byte more than the size: a file that grew is still read whole
	// (up to the bound), and a read of 0 ends it.
	buf := make([]byte, 0, size+1)
	for len(buf) < maxItemBytes {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := syscall.Read(fd, buf[len(buf):min(cap(buf), maxItemBytes)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		if n == 0 {
			break
		}
		buf = buf[:len(buf)+n]
	}
	if buf == nil {
		buf = []byte{}
	}
	return buf, nil
}
