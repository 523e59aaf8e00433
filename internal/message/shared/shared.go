// Package shared parses a spooled message once per transaction for all the
// content checks (bayes, rules, uribl) that run over it in parallel: the
// first caller parses, the others wait for and reuse the result. Open
// likewise reads a message of up to RawLimit bytes from the spool once and
// hands every check that streams the raw message (clamav, dkim, attach) a
// reader over the same bytes. Entries are keyed weakly by the
// *pipeline.Message and dropped when it is garbage-collected, so nothing
// needs to be released explicitly.
package shared

import (
	"bytes"
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

	rawOnce sync.Once
	raw     []byte // the whole message, when its size is <= RawLimit
	rawErr  error
}

// RawLimit is the largest message Open and Parse keep in memory as one
// copy shared by the checks; larger ones are read from the spool by each
// caller (Parse still reads them whole, as message.Parse does).
const RawLimit = 1 << 20

var (
	mu    sync.Mutex
	cache = map[weak.Pointer[pipeline.Message]]*entry{}
)

func lookup(pm *pipeline.Message) *entry {
	key := weak.Make(pm)
	mu.Lock()
	defer mu.Unlock()
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
	return e
}

// rawBytes returns the shared copy of a message of at most RawLimit bytes
// (ok false for a larger one).
func (e *entry) rawBytes(pm *pipeline.Message) (raw []byte, ok bool, err error) {
	if pm.Size <= 0 || pm.Size > RawLimit {
		return nil, false, nil
	}
	e.rawOnce.Do(func() {
		rc, err := pm.Open()
		if err != nil {
			e.rawErr = err
			return
		}
		defer rc.Close()
		e.raw, e.rawErr = readSized(rc, pm.Size)
	})
	return e.raw, true, e.rawErr
}

// Parse returns the decoded message of pm, parsing it at most once (with
// the limits of the first caller).
func Parse(pm *pipeline.Message, lim message.Limits) (*message.Message, error) {
	e := lookup(pm)
	e.once.Do(func() {
		raw, ok, err := e.rawBytes(pm)
		if !ok {
			var rc io.ReadCloser
			if rc, err = pm.Open(); err != nil {
				e.err = err
				return
			}
			raw, err = readSized(rc, pm.Size)
			rc.Close()
		}
		if err != nil {
			e.m, e.err = &message.Message{}, err
			return
		}
		e.m = message.ParseOwned(raw, lim) // only read: sharing raw is safe
	})
	return e.m, e.err
}

// Open returns a reader over pm's raw bytes, like pm.Open: for a message
// of at most RawLimit bytes, over the copy shared by every caller (read
// from the spool once; the reader also implements io.Seeker), else pm.Open
// itself. Close it as a reader from pm.Open.
func Open(pm *pipeline.Message) (io.ReadCloser, error) {
	raw, ok, err := lookup(pm).rawBytes(pm)
	if !ok {
		return pm.Open()
	}
	if err != nil {
		return nil, err
	}
	return rawReader{bytes.NewReader(raw)}, nil
}

type rawReader struct{ *bytes.Reader }

func (rawReader) Close() error { return nil }

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
