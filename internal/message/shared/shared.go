// Package shared parses a spooled message once per transaction for all the
// content checks (bayes, rules, uribl) that run over it in parallel: the
// first caller parses, the others wait for and reuse the result. Entries
// are keyed weakly by the *pipeline.Message and dropped when it is
// garbage-collected, so nothing needs to be released explicitly.
package shared

import (
	"io"
	"runtime"
	"sync"
	"weak"

	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
)

type entry struct {
	once sync.Once
	m    *message.Message
	err  error
}

var (
	mu    sync.Mutex
	cache = map[weak.Pointer[pipeline.Message]]*entry{}
)

// Parse returns the decoded message of pm, parsing it at most once (with
// the limits of the first caller).
func Parse(pm *pipeline.Message, lim message.Limits) (*message.Message, error) {
	key := weak.Make(pm)
	mu.Lock()
	e, ok := cache[key]
	if !ok {
		e = &entry{}
		cache[key] = e
		runtime.AddCleanup(pm, func(k weak.Pointer[pipeline.Message]) {
			mu.Lock()
			delete(cache, k)
			mu.Unlock()
		}, key)
	}
	mu.Unlock()
	e.once.Do(func() {
		rc, err := pm.Open()
		if err != nil {
			e.err = err
			return
		}
		defer rc.Close()
		raw, err := readSized(rc, pm.Size)
		if err != nil {
			e.m, e.err = &message.Message{}, err
			return
		}
		e.m = message.ParseOwned(raw, lim)
	})
	return e.m, e.err
}

// readSized reads r to the end into one buffer sized for the expected
// size (io.ReadAll would grow it from 512 bytes, copying at each step).
func readSized(r io.Reader, size int64) ([]byte, error) {
	if size <= 0 || size > 64<<20 {
		return io.ReadAll(r)
	}
	b := make([]byte, 0, size+1) // +1: EOF is seen without growing
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // more than announced: let append grow it
		}
	}
}

// Len returns the number of cached entries (for tests).
func Len() int {
	mu.Lock()
	defer mu.Unlock()
	return len(cache)
}
