package p0f

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"strings"
	"testing"
)

const systemFP = "/etc/p0f/p0f.fp"

func loadSystem(t testing.TB) *DB {
	t.Helper()
	db, err := Load(systemFP)
	if err != nil {
		if os.IsNotExist(err) && os.Getenv("MOAT_REQUIRE_TOOLS") != "1" {
			t.Skipf("%s not installed (apt install p0f)", systemFP)
		}
		t.Fatal(err)
	}
	return db
}

func TestLoadSystemFile(t *testing.T) {
	db := loadSystem(t)
	if len(db.Sigs) < 50 {
		t.Fatalf("only %d tcp:request signatures", len(db.Sigs))
	}
	seen := map[string]bool{}
	for _, s := range db.Sigs {
		seen[s.Label.Name] = true
	}
	for _, want := range []string{"Linux", "Windows", "Mac OS X", "FreeBSD"} {
		if !seen[want] {
			t.Errorf("no signature for %s", want)
		}
	}
}

// buildSYN builds an IPv4 SYN. opts are raw TCP option bytes.
func buildSYN(ttl byte, df bool, id uint16, window uint16, opts []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	ip := make([]byte, 20)
	ip[0] = 0x45
	tcp := make([]byte, 20+len(opts))
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
	binary.BigEndian.PutUint16(ip[4:], id)
	if df {
		ip[6] = 0x40
	}
	ip[8], ip[9] = ttl, 6
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 25)
	binary.BigEndian.PutUint32(tcp[4:], 12345)
	tcp[12] = byte((20+len(opts))/4) << 4
	tcp[13] = 0x02
	binary.BigEndian.PutUint16(tcp[14:], window)
	copy(tcp[20:], opts)
	return append(ip, tcp...)
}

var (
	optMSS1460 = []byte{2, 4, 0x05, 0xb4}
	optNOP     = []byte{1}
	optSOK     = []byte{4, 2}
	optWS8     = []byte{3, 3, 8}
	optTS      = []byte{8, 10, 0, 0, 0, 1, 0, 0, 0, 0}
)

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func TestParseSYN(t *testing.T) {
	b := buildSYN(117, true, 777, 8192, cat(optMSS1460, optNOP, optWS8, optNOP, optNOP, optSOK))
	s, err := ParseSYN(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "4:117:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0"; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	// Zero own timestamp, zero IP ID without DF.
	b = buildSYN(64, false, 0, 29200, cat(optMSS1460, optSOK, optTS, optNOP, []byte{3, 3, 7}))
	binary.BigEndian.PutUint32(b[48:], 0) // own timestamp := 0
	s, err = ParseSYN(b)
	if err != nil {
		t.Fatal(err)
	}
	if s.Layout != "mss,sok,ts,nop,ws" || s.Scale != 7 || s.Quirks&QZeroID == 0 || s.Quirks&QOptZeroTS1 == 0 || s.Quirks&QDF != 0 {
		t.Fatalf("got %s", s)
	}
	for _, bad := range [][]byte{nil, {0x45}, {0x60, 0, 0}, buildSYN(64, true, 1, 1, nil)[:30]} {
		if _, err := ParseSYN(bad); err == nil {
			t.Errorf("ParseSYN(%x) accepted", bad)
		}
	}
}

func TestMatchSynthetic(t *testing.T) {
	db := loadSystem(t)
	cases := []struct {
		name string
		syn  []byte
		os   string
		gen  bool
	}{
		// Windows 7/8: 8192,8:mss,nop,ws,nop,nop,sok:df,id+, 10 hops away.
		{"windows7", buildSYN(118, true, 4242, 8192, cat(optMSS1460, optNOP, optWS8, optNOP, optNOP, optSOK)), "Windows", false},
		// Linux 3.11+: mss*20,7:mss,sok,ts,nop,ws:df,id+.
		{"linux", buildSYN(52, true, 99, 1460*20, cat(optMSS1460, optSOK, optTS, optNOP, []byte{3, 3, 7})), "Linux", false},
		// Windows without window scaling, generic NT kernel signature.
		{"windows-generic", buildSYN(128, true, 1, 12345, cat(optMSS1460, optNOP, optNOP, optSOK)), "Windows", true},
	}
	for _, c := range cases {
		s, err := ParseSYN(c.syn)
		if err != nil {
			t.Fatal(err)
		}
		m := db.Match(s)
		if m == nil {
			t.Fatalf("%s: no match for %s", c.name, s)
		}
		if m.Label.Name != c.os || m.Label.Generic != c.gen {
			t.Fatalf("%s: matched %s (%s), want %s generic=%v", c.name, m.Label, m.Sig.Raw, c.os, c.gen)
		}
	}
	// Windows 7 with DF lost on the way: still Windows, fuzzily.
	s, _ := ParseSYN(buildSYN(118, false, 4242, 8192, cat(optMSS1460, optNOP, optWS8, optNOP, optNOP, optSOK)))
	if m := db.Match(s); m == nil || m.Label.Name != "Windows" || !m.Fuzzy {
		t.Fatalf("DF-less windows: %+v", m)
	}
	// An option layout nobody uses matches nothing.
	s, _ = ParseSYN(buildSYN(64, true, 1, 1000, cat(optSOK, optSOK, optMSS1460)))
	if m := db.Match(s); m != nil {
		t.Fatalf("odd layout matched %s", m.Label)
	}
	// TTL above the initial TTL: no match against ittl 64 signatures.
	s, _ = ParseSYN(buildSYN(200, true, 99, 1460*20, cat(optMSS1460, optSOK, optTS, optNOP, []byte{3, 3, 7})))
	if m := db.Match(s); m != nil && m.Label.Name == "Linux" {
		t.Fatalf("ttl 200 matched Linux (ittl 64)")
	}
}

// A real SYN from this Linux host over loopback is recognised as Linux.
func TestRealLoopbackSYN(t *testing.T) {
	db := loadSystem(t)
	lc := net.ListenConfig{Control: SaveSYNControl}
	l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ln := l.(*net.TCPListener)
	go func() {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err == nil {
			c.Close()
		}
	}()
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := SavedSYN(c)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSYN(raw)
	if err != nil {
		t.Fatalf("%v (%x)", err, raw)
	}
	m := db.Match(s)
	if m == nil {
		t.Fatalf("no match for loopback SYN %s", s)
	}
	t.Logf("loopback SYN %s -> %s (fuzzy=%v, sig %s)", s, m.Label, m.Fuzzy, m.Sig.Raw)
	if m.Label.Name != "Linux" {
		t.Fatalf("loopback SYN %s matched %s", s, m.Label)
	}
	// The kernel hands the SYN out once.
	if _, err := SavedSYN(c); err == nil {
		if b, _ := SavedSYN(c); len(b) > 0 {
			t.Fatal("saved SYN returned twice")
		}
	}
}

func TestParseErrors(t *testing.T) {
	good := "[tcp:request]\nlabel = s:unix:Linux:x\nsig = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0\n"
	if db, err := Parse(strings.NewReader(good)); err != nil || len(db.Sigs) != 1 {
		t.Fatalf("%v %v", db, err)
	}
	for _, bad := range []string{
		"[tcp:request]\nsig = *:64:0:*:*,*:mss:df:0\n",                 // sig before label
		"[tcp:request]\nlabel = x:unix:L:1\n",                          // bad label type
		"[tcp:request]\nlabel = s:unix:L:1\nsig = *:64:0:*:*:mss::0\n", // missing scale
		"[tcp:request]\nlabel = s:unix:L:1\nsig = *:64:0:*:*,*:mss:zz:0\n",
		"[tcp:request]\nlabel = s:unix:L:1\nsig = *:999:0:*:*,*:mss::0\n",
		"[tcp:request]\nlabel = s:unix:L:1\nsig = *:64:0:*:%0,*:mss::0\n",
	} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	// Other sections are ignored, bad or not.
	if _, err := Parse(strings.NewReader("[http:request]\nwhatever\n")); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseSYN(f *testing.F) {
	f.Add(buildSYN(118, true, 4242, 8192, cat(optMSS1460, optNOP, optWS8, optNOP, optNOP, optSOK)))
	f.Add(buildSYN(64, false, 0, 100, cat(optTS, []byte{0, 1, 2})))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSYN(b)
		if err == nil {
			_ = s.String()
		}
	})
}

func FuzzParseSig(f *testing.F) {
	f.Add("*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0")
	f.Add("4:54+10:0:1430:%8192,*:mss,nop,eol+1,?9:ts1-:+")
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := ParseSig(s)
		if err == nil {
			syn := &SYN{Version: 4, TTL: 60, MSS: 1460, Window: 8192, Scale: 2, Layout: "mss"}
			sig.Label = &Label{}
			sig.match(syn)
		}
	})
}
