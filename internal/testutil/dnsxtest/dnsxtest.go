// Package dnsxtest builds Moat's resolver (internal/dnsx) for tests, asking
// only a test DNS server (internal/testutil/dnstest). It is a package of its
// own because dnstest cannot import dnsx (dnsx's tests use dnstest).
package dnsxtest

import (
	"testing"

	"moat.dev/moat/internal/dnsx"
)

// Client returns a dnsx.Client that sends every query to addr (e.g.
// dnstest.Server.Addr), with dnsx's defaults changed by tune (timeouts,
// attempts, CacheSize = 0 for tests that change zone data on the fly). It
// logs nowhere and registers no metrics; an invalid configuration fails t.
func Client(t testing.TB, addr string, tune ...func(*dnsx.Config)) *dnsx.Client {
	t.Helper()
	cfg := dnsx.DefaultConfig()
	cfg.Resolvers = []string{addr}
	for _, f := range tune {
		f(&cfg)
	}
	c, err := dnsx.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
