package relay

import (
	"bufio"
	"bytes"
	"io"
	"sync"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/queue"
)

// maxInMemory is the largest message the relay reads into memory once per
// delivery (pooled buffers) instead of reading the spool file once for the
// pass mark's digest and again to transmit it.
const maxInMemory = 256 << 10

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// memBody is a message held in memory for one delivery.
type memBody struct{ buf *bytes.Buffer }

// loadSmall reads a message of at most maxInMemory bytes, or returns nil
// (too big, unknown size, or unreadable: the streaming path then reports
// the error).
func loadSmall(d *queue.Delivery) *memBody {
	if d.Env == nil || d.Env.Size <= 0 || d.Env.Size > maxInMemory || d.Open == nil {
		return nil
	}
	rc, err := d.Open()
	if err != nil {
		return nil
	}
	defer rc.Close()
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	buf.Grow(int(d.Env.Size) + 1)
	if _, err := buf.ReadFrom(io.LimitReader(rc, maxInMemory+1)); err != nil || buf.Len() > maxInMemory {
		putBuf(buf)
		return nil
	}
	return &memBody{buf: buf}
}

func (m *memBody) open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(m.buf.Bytes())), nil
}

func (m *memBody) release() { putBuf(m.buf) }

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= 2*maxInMemory {
		bufPool.Put(b)
	}
}

var normPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

// memDigest computes the pass mark digest of what is transmitted (the
// prepended fields and the message, normalised), in memory.
func memDigest(d *queue.Delivery) ([]byte, error) {
	rc, err := d.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	out := bufPool.Get().(*bytes.Buffer)
	out.Reset()
	defer putBuf(out)
	bw := normPool.Get().(*bufio.Writer)
	bw.Reset(out)
	defer func() { bw.Reset(nil); normPool.Put(bw) }()
	nw := newNormWriter(bw, false)
	io.WriteString(nw, d.Env.Prepend)
	if err := copyMessage(nw, rc, d.Env.SubjectPrefix, d.Env.Prepend); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return passmark.Digest(bytes.NewReader(out.Bytes()))
}
