package clamdtest

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

func instream(t *testing.T, addr string, data string) string {
	t.Helper()
	network, a, _ := strings.Cut(addr, ":")
	conn, err := net.Dial(network, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	n := len(data)
	msg := "zINSTREAM\x00" + string([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + data + "\x00\x00\x00\x00"
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(conn).ReadString(0)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(reply, "\x00")
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
	if ping(c.Unix) == nil {
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
