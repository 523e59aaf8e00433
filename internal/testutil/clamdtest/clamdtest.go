// Package clamdtest runs a real clamd (Debian clamav-daemon, /usr/sbin/clamd)
// for tests, on a Unix socket and a loopback TCP port, with a tiny signature
// database built locally: no signature download is needed or attempted.
// Starting and stopping clamd is internal/clamdrun's work; this package adds
// the testing glue.
//
// The database holds two signatures:
//
//   - EICARSignature matches the EICAR test string anywhere in a scanned
//     object (an .ndb body signature) and the exact 68-byte EICAR file (an
//     .hdb MD5 signature, built with sigtool --md5);
//   - SampleSignature matches SampleMarker, a marker string generated per
//     package run (an .ndb body signature), standing for "some other malware".
//
// clamd reports signatures from unsigned databases with the suffix
// ".UNOFFICIAL"; the constants below include it.
//
// A tiny database loads in well under a second. Tests that only scan may
// share one instance (Shared); tests that stop or restart clamd start their
// own (Start).
//
// If clamd or sigtool is missing the test is skipped, unless the
// environment variable MOAT_REQUIRE_TOOLS=1 is set (CI), in which case it
// fails.
package clamdtest

import (
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"moat.dev/moat/internal/clamdrun"
)

// EICAR is the standard anti-virus test file (68 bytes).
const EICAR = clamdrun.EICAR

const (
	// EICARSignature is the name clamd reports for EICAR.
	EICARSignature = clamdrun.EICARSignature
	// SampleSignature is the name clamd reports for SampleMarker.
	SampleSignature = clamdrun.SampleSignature
)

// SampleMarker is a random string, fixed for one test binary run, that the
// test database detects as SampleSignature.
var SampleMarker = clamdrun.SampleMarker

// DefaultStreamMaxLength is the StreamMaxLength written to clamd.conf when
// Options leaves it zero: small, so that oversize tests stay fast.
const DefaultStreamMaxLength = clamdrun.DefaultStreamMaxLength

// Options tune one instance. The zero value is fine.
type Options struct {
	StreamMaxLength int64         // clamd StreamMaxLength in bytes; 0 = DefaultStreamMaxLength
	IdleTimeout     time.Duration // clamd IdleTimeout (idle session connections are closed after it); 0 = clamd default (30s)
	NoTCP           bool          // listen only on the Unix socket
}

// Clamd is one running clamd.
type Clamd = clamdrun.Clamd

// Tool returns the path of an external program, or skips (fails with
// MOAT_REQUIRE_TOOLS=1) the test if it is not installed.
func Tool(t testing.TB, name string, fallbacks ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, f := range fallbacks {
		if st, err := os.Stat(f); err == nil && !st.IsDir() {
			return f
		}
	}
	if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s is not installed (MOAT_REQUIRE_TOOLS=1)", name)
	}
	t.Skipf("%s is not installed", name)
	return ""
}

// Start builds a database and starts a clamd owned by t; it is stopped and
// its directory removed when t ends.
func Start(t testing.TB, opts ...Options) *Clamd {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	c, err := clamdrun.Start(runOptions(t, o))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func runOptions(t testing.TB, o Options) clamdrun.Options {
	t.Helper()
	return clamdrun.Options{
		Clamd:           Tool(t, "clamd", "/usr/sbin/clamd"),
		Sigtool:         Tool(t, "sigtool", "/usr/bin/sigtool"),
		StreamMaxLength: o.StreamMaxLength,
		IdleTimeout:     o.IdleTimeout,
		NoTCP:           o.NoTCP,
	}
}

var shared struct {
	once sync.Once
	c    *Clamd
	err  error
}

// Shared returns one clamd (default Options) shared by every test of the
// package run. Do not Stop or Restart it. Call Cleanup from TestMain after
// m.Run to stop it and remove its directory (clamd also gets SIGKILL when
// the test binary dies, through Pdeathsig).
func Shared(t testing.TB) *Clamd {
	t.Helper()
	o := runOptions(t, Options{})
	shared.once.Do(func() { shared.c, shared.err = clamdrun.Start(o) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

// Cleanup stops the shared instance, if one was started.
func Cleanup() {
	if shared.c != nil {
		shared.c.Close()
	}
}
