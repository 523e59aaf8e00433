package lockdown

import "syscall"

func errConnRefused() error { return syscall.ECONNREFUSED }
