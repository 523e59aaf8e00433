package classify

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"moat.dev/moat/internal/message"
)

// TestHeaderTokens: the default feature set carries the sender, reply
// path and relay domains (host and registered domain), the media type and
// the mailer as single features.
func TestHeaderTokens(t *testing.T) {
	raw := "Received: from mail.sender.example.co.uk (mail.sender.example.co.uk [192.0.2.7])\r\n" +
		"\tby mx.moat.test (Postfix) with ESMTP id 1234\r\n" +
		"Return-Path: <bounce@lists.example.org>\r\n" +
		"From: \"Alice\" <alice@Shop.Example.COM>\r\n" +
		"Reply-To: replies@example.net\r\n" +
		"X-Mailer: Bulk Mailer 5.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n" +
		"Subject: hello\r\n\r\nhello there\r\n"
	c, err := New(DefaultConfig(), NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range c.Features(message.ParseBytes([]byte(raw), message.DefaultLimits()), true) {
		got[f.Name] = true
	}
	for _, want := range []string{
		"hd:from:shop.example.com", "hd:from:example.com",
		"hd:rp:lists.example.org", "hd:rp:example.org",
		"hd:rt:example.net",
		"hd:rcv:from mail.sender.example.co.uk", "hd:rcv:from example.co.uk",
		"hd:rcv:by mx.moat.test",
		"hd:ct:text/plain",
		"hd:ua:bulk", "hd:ua:mailer",
	} {
		if !got[want] {
			t.Errorf("missing feature %q", want)
		}
	}
	for name := range got {
		if name == "hd:from:" || name == "hd:rcv:from " {
			t.Errorf("empty header token %q", name)
		}
	}
}

// TestHashSet: the open-addressing set agrees with a map on hashes that
// share low bits, repeat, include 0, and outgrow the first table.
func TestHashSet(t *testing.T) {
	var s hashSet
	ref := map[uint64]bool{}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 40000 {
		var h uint64
		switch i % 4 {
		case 0:
			h = r.Uint64()
		case 1:
			h = uint64(r.IntN(5000)) << 40 // same low bits
		case 2:
			h = uint64(r.IntN(3)) // 0, 1, 2
		default:
			h = uint64(r.IntN(20000))
		}
		if got, want := s.add(h), !ref[h]; got != want {
			t.Fatalf("add(%#x) = %v, want %v (after %d adds)", h, got, want, i)
		}
		ref[h] = true
	}
	if n := s.n + map[bool]int{true: 1}[s.zero]; n != len(ref) {
		t.Fatalf("set holds %d, want %d", n, len(ref))
	}
}

// TestTrimJoiners: trimJoiners is strings.Trim(t, "'-.!"), on tokens of
// joiners only, multi-byte runes and invalid UTF-8.
func TestTrimJoiners(t *testing.T) {
	for _, s := range []string{"", "a", "'", "'-.!", "!!a!!", "'don't'", "-é-", "é!", "!é", "\xff!", "!\xff", "a.b", ".-'!x!'-.", "x'"} {
		if got, want := trimJoiners(s), strings.Trim(s, "'-.!"); got != want {
			t.Errorf("trimJoiners(%q) = %q, want %q", s, got, want)
		}
	}
}

// TestExtractReusesSets: Extract reuses its hash sets (and featureKeys
// its buffers) across messages; a message's features do not depend on
// what was extracted before it, on one goroutine or many.
func TestExtractReusesSets(t *testing.T) {
	items := synthRaw(30, 5)
	c, err := New(DefaultConfig(), NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	var ms []*message.Message
	for _, it := range items {
		ms = append(ms, message.ParseBytes(it.Data, message.DefaultLimits()))
	}
	first := make([][]Feature, len(ms))
	keys := make([][]uint64, len(ms))
	for i, m := range ms {
		first[i] = Extract(m, c.fs, true)
		keys[i] = c.keys(first[i])
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				for j := range ms {
					i := (j*7 + g + round) % len(ms) // another order each time
					if got := Extract(ms[i], c.fs, true); !slices.Equal(got, first[i]) {
						t.Errorf("message %d: %d features, first time %d", i, len(got), len(first[i]))
						return
					}
					if got := c.featureKeys(ms[i], 3); !slices.Equal(got, keys[i]) || cap(got) < len(got)+3 {
						t.Errorf("message %d: keys differ from the features' (or no room for 3 more)", i)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
