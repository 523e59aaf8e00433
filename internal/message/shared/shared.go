// Package shared parses a spooled message once per transaction for all the
// content checks (bayes, rules, uribl) that run over it in parallel: the
// first caller parses, the others wait for and reuse the result. Entries
// are keyed weakly by the *pipeline.Message and dropped when it is
// garbage-collected, so nothing needs to be released explicitly.
package shared

import (
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
		e.m, e.err = message.Parse(rc, lim)
	})
	return e.m, e.err
}

// Len returns the number of cached entries (for tests).
func Len() int {
	mu.Lock()
	defer mu.Unlock()
	return len(cache)
}
