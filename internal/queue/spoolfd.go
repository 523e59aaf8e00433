package queue

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// dirs holds the spool directories a running queue touches for every
// message, opened once (through the os.Root, so they are inside the spool)
// and used with the *at system calls: opening, renaming and unlinking a
// queue file is then one system call, where going through os.Root costs
// an open and a close of the directory (two for a rename) each time. Only
// single path components built from queue IDs are used with them, with
// O_NOFOLLOW, so nothing can escape the spool either way.
type dirs struct {
	files [3]*os.File // tmp, ready, hold
	fds   [3]int
}

func dirIndex(dir string) int {
	switch dir {
	case dirTmp:
		return 0
	case dirReady:
		return 1
	case dirHold:
		return 2
	}
	panic("queue: no descriptor for directory " + dir)
}

func openDirs(root *os.Root) (*dirs, error) {
	d := &dirs{}
	for i, name := range []string{dirTmp, dirReady, dirHold} {
		f, err := root.Open(name)
		if err != nil {
			d.close()
			return nil, err
		}
		d.files[i] = f
		d.fds[i] = int(f.Fd())
	}
	return d, nil
}

func (d *dirs) close() {
	for _, f := range d.files {
		if f != nil {
			f.Close()
		}
	}
}

func (d *dirs) fd(dir string) int { return d.fds[dirIndex(dir)] }

// retryEINTR repeats a system call interrupted by a signal (the Go runtime
// sends SIGURG for preemption).
func retryEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// openAt opens dir/name. The returned file is not registered with the
// runtime poller (regular files never are), which saves the fcntl calls
// os.Root.OpenFile makes.
func (q *Queue) openAt(dir, name string, flag int, perm uint32) (*os.File, error) {
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Openat(q.dirs.fd(dir), name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		return err
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: dir + "/" + name, Err: err}
	}
	return os.NewFile(uintptr(fd), dir+"/"+name), nil
}

// renameAt renames fromDir/from to toDir/to.
func (q *Queue) renameAt(fromDir, from, toDir, to string) error {
	err := retryEINTR(func() error {
		return unix.Renameat(q.dirs.fd(fromDir), from, q.dirs.fd(toDir), to)
	})
	if err != nil {
		return &os.LinkError{Op: "renameat", Old: fromDir + "/" + from, New: toDir + "/" + to, Err: err}
	}
	return nil
}

// removeAt unlinks dir/name.
func (q *Queue) removeAt(dir, name string) error {
	err := retryEINTR(func() error { return unix.Unlinkat(q.dirs.fd(dir), name, 0) })
	if err != nil {
		return &os.PathError{Op: "unlinkat", Path: dir + "/" + name, Err: err}
	}
	return nil
}
