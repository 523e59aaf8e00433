package shared

import (
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
)

func TestParseOnceAndRelease(t *testing.T) {
	var opens atomic.Int32
	pm := &pipeline.Message{Open: func() (io.ReadCloser, error) {
		opens.Add(1)
		return io.NopCloser(strings.NewReader("Subject: hi\r\n\r\nbody\r\n")), nil
	}}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := Parse(pm, message.DefaultLimits())
			if err != nil || m.Subject != "hi" {
				t.Errorf("parse: %v %v", m, err)
			}
		}()
	}
	wg.Wait()
	if opens.Load() != 1 {
		t.Fatalf("opened %d times", opens.Load())
	}
	runtime.KeepAlive(pm)
	pm = nil
	for i := 0; i < 500 && Len() > 0; i++ {
		runtime.GC()
		time.Sleep(time.Millisecond) // let the cleanup goroutine run
	}
	if Len() != 0 {
		t.Fatalf("cache still holds %d entries", Len())
	}
}

// readSized returns exactly what the reader holds whatever the announced
// size (Size is the SIZE= parameter or the spool's count; trust neither).
func TestReadSizedAnySize(t *testing.T) {
	data := strings.Repeat("0123456789", 1000)
	for _, size := range []int64{-1, 0, 1, 100, 9999, 10000, 10001, 1 << 20} {
		got, err := readSized(iotest.OneByteReader(strings.NewReader(data)), size)
		if err != nil || string(got) != data {
			t.Fatalf("size %d: got %d bytes, %v; want %d bytes", size, len(got), err, len(data))
		}
		got, err = readSized(strings.NewReader(data), size)
		if err != nil || string(got) != data {
			t.Fatalf("size %d: got %d bytes, %v; want %d bytes", size, len(got), err, len(data))
		}
	}
	if _, err := readSized(iotest.ErrReader(io.ErrUnexpectedEOF), 10); err != io.ErrUnexpectedEOF {
		t.Fatalf("read error not returned: %v", err)
	}
}
