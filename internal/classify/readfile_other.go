//go:build !unix

package classify

import (
	"io"
	"os"
)

// readFile reads a whole message file (at most maxItemBytes).
func readFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxItemBytes))
}
