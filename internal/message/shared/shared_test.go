package shared

import (
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
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
