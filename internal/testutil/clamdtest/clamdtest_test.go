package clamdtest

import (
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/clamdrun"
)

func instream(t *testing.T, addr string, data string) string {
	t.Helper()
	reply, err := clamdrun.Instream(addr, data)
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

func TestStartScanRestart(t *testing.T) {
	start := time.Now()
	c := Start(t)
	t.Logf("clamd started in %v", time.Since(start))
	if len(c.Addrs) != 2 || !strings.HasPrefix(c.Unix, "unix:/") || !strings.HasPrefix(c.TCP, "tcp:127.0.0.1:") {
		t.Fatalf("addresses: %q %q %q", c.Addrs, c.Unix, c.TCP)
	}
	for _, addr := range c.Addrs {
		if got := instream(t, addr, "hello"); got != "stream: OK" {
			t.Errorf("%s clean: %q", addr, got)
		}
		if got := instream(t, addr, EICAR); got != "stream: "+EICARSignature+" FOUND" {
			t.Errorf("%s eicar: %q", addr, got)
		}
		if got := instream(t, addr, "Subject: x\r\n\r\nsome text "+SampleMarker+" more\r\n"); got != "stream: "+SampleSignature+" FOUND" {
			t.Errorf("%s sample: %q", addr, got)
		}
	}
	c.Stop()
	if c.Running() {
		t.Fatal("still running after Stop")
	}
	if clamdrun.Ping(c.Unix) == nil {
		t.Fatal("PING answered after Stop")
	}
	start = time.Now()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("clamd restarted in %v", time.Since(start))
	if got := instream(t, c.TCP, EICAR); got != "stream: "+EICARSignature+" FOUND" {
		t.Errorf("after restart: %q", got)
	}
}

func TestStreamMaxLength(t *testing.T) {
	c := Start(t, Options{StreamMaxLength: 1000, NoTCP: true})
	if c.TCP != "" || len(c.Addrs) != 1 {
		t.Fatalf("NoTCP: %q", c.Addrs)
	}
	if got := instream(t, c.Unix, strings.Repeat("a", 2000)); !strings.Contains(got, "size limit exceeded") {
		t.Fatalf("oversize: %q", got)
	}
}
