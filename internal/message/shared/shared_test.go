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

// Open and Parse of one small message read the spool once between them;
// every reader sees the whole message and can seek; a large message is
// opened by each caller.
func TestOpenSharesOneRead(t *testing.T) {
	const raw = "Subject: shared\r\n\r\nbody line\r\n"
	var opens atomic.Int32
	pm := &pipeline.Message{Size: int64(len(raw)), Open: func() (io.ReadCloser, error) {
		opens.Add(1)
		return io.NopCloser(strings.NewReader(raw)), nil
	}}
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%2 == 0 {
				if m, err := Parse(pm, message.DefaultLimits()); err != nil || m.Subject != "shared" {
					t.Errorf("parse: %v %v", m, err)
				}
				return
			}
			rc, err := Open(pm)
			if err != nil {
				t.Error(err)
				return
			}
			defer rc.Close()
			b, err := io.ReadAll(rc)
			if err != nil || string(b) != raw {
				t.Errorf("read %q, %v", b, err)
			}
			sk, ok := rc.(io.Seeker)
			if !ok {
				t.Error("shared reader cannot seek")
				return
			}
			if _, err := sk.Seek(0, io.SeekStart); err != nil {
				t.Error(err)
			}
			if b, _ := io.ReadAll(rc); string(b) != raw {
				t.Errorf("after seek read %q", b)
			}
		}(i)
	}
	wg.Wait()
	if n := opens.Load(); n != 1 {
		t.Fatalf("spool opened %d times, want 1", n)
	}

	big := strings.Repeat("x", RawLimit+1)
	opens.Store(0)
	pmBig := &pipeline.Message{Size: int64(len(big)), Open: func() (io.ReadCloser, error) {
		opens.Add(1)
		return io.NopCloser(strings.NewReader(big)), nil
	}}
	for i := 0; i < 2; i++ {
		rc, err := Open(pmBig)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := io.Copy(io.Discard, rc); n != int64(len(big)) {
			t.Fatalf("read %d bytes of %d", n, len(big))
		}
		rc.Close()
	}
	if n := opens.Load(); n != 2 {
		t.Fatalf("large message opened %d times, want 2 (no shared copy)", n)
	}
	runtime.KeepAlive(pm)
	runtime.KeepAlive(pmBig)
}
