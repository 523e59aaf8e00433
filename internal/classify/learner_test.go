package classify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"moat.dev/moat/internal/message"
)

// sameSQLModel fails unless two stores hold the same rows (bit for bit),
// totals, sizes and lessons in scope.
func sameSQLModel(t *testing.T, a, b TokenStore, scope string, keys []uint64, fps [][32]byte) {
	t.Helper()
	ctx := context.Background()
	ra, err1 := a.Get(ctx, scope, keys)
	rb, err2 := b.Get(ctx, scope, keys)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	nonzero := 0
	for i := range keys {
		if ra[i] != rb[i] {
			t.Fatalf("%s key %d: one by one %+v, batch %+v", scope, keys[i], ra[i], rb[i])
		}
		if ra[i] != (Row{}) {
			nonzero++
		}
	}
	if nonzero == 0 {
		t.Fatalf("%s: no rows compared", scope)
	}
	sa, _ := a.Size(ctx, scope)
	sb, _ := b.Size(ctx, scope)
	ta, _ := a.Totals(ctx, scope)
	tb, _ := b.Totals(ctx, scope)
	if sa != sb || ta != tb || sa == 0 {
		t.Fatalf("%s: one by one size %d totals %+v, batch size %d totals %+v", scope, sa, ta, sb, tb)
	}
	for _, fp := range fps {
		la, _ := a.Lesson(ctx, scope, fp)
		lb, _ := b.Lesson(ctx, scope, fp)
		if la != lb {
			t.Fatalf("%s lesson %x: one by one %v, batch %v", scope, fp[:4], la, lb)
		}
	}
}

// TestLearnerMatchesOneByOne: a Learner (lessons learned in memory in
// order, written in one transaction per commit) leaves exactly the model
// that learning the same lessons one by one leaves, with the same
// outcomes: duplicates already known, corrections moved (within a batch
// and across commits), for every algorithm and both a site and a user
// scope; and the two score every message the same.
func TestLearnerMatchesOneByOne(t *testing.T) { forEachBackend(t, testLearnerMatchesOneByOne) }

func testLearnerMatchesOneByOne(t *testing.T, b testBackend) {
	ctx := context.Background()
	ms, ls := synthMail(90, 3)
	type lesson struct {
		user string
		m    *message.Message
		l    Label
	}
	var seq []lesson
	for i, m := range ms[:70] {
		seq = append(seq, lesson{"", m, ls[i]})
		if i%4 == 0 {
			seq = append(seq, lesson{"erin@example.com", m, ls[i]})
		}
		if i%10 == 5 { // the same lesson again, within the batch
			seq = append(seq, lesson{"", m, ls[i]})
		}
		if i%10 == 7 { // a correction within the batch
			seq = append(seq, lesson{"", ms[i-1], 3 - ls[i-1]})
		}
	}
	for i, m := range ms[:5] { // corrections of lessons committed earlier
		seq = append(seq, lesson{"", m, 3 - ls[i]})
	}
	for _, alg := range []string{"stack", "logreg", "chi2"} {
		t.Run(alg, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Algorithm = alg
			cfg.MinHam, cfg.MinSpam = 5, 5
			one, bulk := b.store(b.pools(t)(), SQLStoreOptions{}), b.store(b.pools(t)(), SQLStoreOptions{})
			c1, err := New(cfg, one)
			if err != nil {
				t.Fatal(err)
			}
			c2, _ := New(cfg, bulk)
			ln := c2.NewLearner(37) // several commits, one in the middle of the corrections
			counts := map[LearnOutcome]int{}
			for i, x := range seq {
				o1, err1 := c1.Learn(ctx, x.user, x.m, x.l)
				o2, err2 := ln.Learn(ctx, x.user, x.m, x.l)
				if err1 != nil || err2 != nil || o1 != o2 {
					t.Fatalf("lesson %d: one by one %v %v, batch %v %v", i, o1, err1, o2, err2)
				}
				counts[o1]++
			}
			if err := ln.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if counts[Learned] == 0 || counts[AlreadyKnown] == 0 || counts[Moved] < 10 {
				t.Fatalf("outcomes %v: the sequence does not exercise duplicates and moves", counts)
			}
			var fps [][32]byte
			for _, m := range ms {
				fps = append(fps, m.Fingerprint)
			}
			for _, cl := range []*Classifier{c1, c1.words} {
				if cl == nil {
					continue
				}
				var keys []uint64
				for _, m := range ms {
					keys = append(keys, cl.keys(cl.Features(m, false))...)
				}
				if cl == c1 && c1.words != nil {
					keys = append(keys, stackKeys...)
				}
				for _, user := range []string{"", "erin@example.com"} {
					sameSQLModel(t, one, bulk, cl.Scope(user), keys, fps)
				}
			}
			for _, user := range []string{"", "erin@example.com"} {
				for _, m := range ms[70:] {
					r1, err1 := c1.Classify(ctx, user, m, false)
					r2, err2 := c2.Classify(ctx, user, m, false)
					if err1 != nil || err2 != nil || r1.Prob != r2.Prob || r1.Ham != r2.Ham || r1.Spam != r2.Spam || !r1.Trained {
						t.Fatalf("user %q: one by one %+v %v, batch %+v %v", user, r1, err1, r2, err2)
					}
				}
			}
			// Learning every message again with its final label does
			// nothing: all already known, nothing written.
			type um struct {
				user string
				m    *message.Message
			}
			final := map[um]Label{}
			var order []um
			for _, x := range seq {
				if _, ok := final[um{x.user, x.m}]; !ok {
					order = append(order, um{x.user, x.m})
				}
				final[um{x.user, x.m}] = x.l
			}
			ln = c2.NewLearner(0)
			scopes := []string{c2.Scope(""), c2.Scope("erin@example.com")}
			var vs []int64
			for _, sc := range scopes {
				v, _ := bulk.Version(ctx, sc)
				vs = append(vs, v)
			}
			for _, k := range order {
				if out, err := ln.Learn(ctx, k.user, k.m, final[k]); err != nil || out != AlreadyKnown {
					t.Fatalf("learning again: %v %v", out, err)
				}
			}
			if err := ln.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			for i, sc := range scopes {
				if v, _ := bulk.Version(ctx, sc); v != vs[i] || v == 0 {
					t.Fatalf("%s: version %d after learning nothing new, was %d", sc, v, vs[i])
				}
			}
		})
	}
}

// TestLearnerOtherWriter: when another process writes the scope while a
// Learner's lessons are pending, the Learner adds its changes instead of
// setting the rows, so neither writer's lessons are lost (chi2: counts,
// so the result equals learning all lessons one by one exactly).
func TestLearnerOtherWriter(t *testing.T) { forEachBackend(t, testLearnerOtherWriter) }

func testLearnerOtherWriter(t *testing.T, b testBackend) {
	ctx := context.Background()
	ms, ls := synthMail(12, 5)
	cfg := DefaultConfig()
	cfg.Algorithm = "chi2"
	pools := b.pools(t)
	bulk, other, ref := b.store(pools(), SQLStoreOptions{}), b.store(pools(), SQLStoreOptions{}), b.store(b.pools(t)(), SQLStoreOptions{})
	cb, _ := New(cfg, bulk)
	co, _ := New(cfg, other)
	cr, _ := New(cfg, ref)
	ln := cb.NewLearner(0)
	for i, m := range ms[:11] {
		if _, err := ln.Learn(ctx, "", m, ls[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := cr.Learn(ctx, "", m, ls[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*Classifier{co, cr} { // the other writer, meanwhile
		if out, err := c.Learn(ctx, "", ms[11], ls[11]); err != nil || out != Learned {
			t.Fatalf("other writer: %v %v", out, err)
		}
	}
	if err := ln.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var keys []uint64
	var fps [][32]byte
	for _, m := range ms {
		keys = append(keys, cr.keys(cr.Features(m, false))...)
		fps = append(fps, m.Fingerprint)
	}
	sameSQLModel(t, ref, bulk, cr.Scope(""), keys, fps)
	if tot, _ := bulk.Totals(ctx, cr.Scope("")); tot.Ham+tot.Spam != 12 {
		t.Fatalf("totals %+v, want 12 lessons", tot)
	}
}

// synthRaw returns n raw labelled messages (deterministic), spam and ham
// alternating, each with a hundred words or so of a large vocabulary (a
// thousand distinct 4-grams), varied senders and relays, and some HTML.
func synthRaw(n int, seed uint64) []Item {
	rng := rand.New(rand.NewPCG(seed, 11))
	vocab := func(k int) []string {
		out := make([]string, k)
		for i := range out {
			b := make([]byte, 3+rng.IntN(8))
			for j := range b {
				b[j] = byte('a' + rng.IntN(26))
			}
			out[i] = string(b)
		}
		return out
	}
	hamV, spamV, common := vocab(1500), vocab(1500), vocab(300)
	var items []Item
	for i := range n {
		v, l, dom := hamV, Ham, "example.org"
		if i%2 == 1 {
			v, l, dom = spamV, Spam, fmt.Sprintf("bulk%d.example", rng.IntN(40))
		}
		var b strings.Builder
		fmt.Fprintf(&b, "Received: from relay%d.%s by mx.example.com\r\n", rng.IntN(9), dom)
		fmt.Fprintf(&b, "From: sender%d@%s\r\nTo: user@example.com\r\n", rng.IntN(50), dom)
		fmt.Fprintf(&b, "Subject: %s %s %d\r\n", v[rng.IntN(len(v))], common[rng.IntN(len(common))], i)
		html := rng.IntN(3) == 0
		if html {
			b.WriteString("Content-Type: text/html\r\n\r\n<html><body><p>")
		} else {
			b.WriteString("\r\n")
		}
		for w := range 60 + rng.IntN(100) {
			switch rng.IntN(6) {
			case 0:
				b.WriteString(common[rng.IntN(len(common))])
			case 1:
				b.WriteString(hamV[rng.IntN(len(hamV))] + spamV[rng.IntN(len(spamV))])
			default:
				b.WriteString(v[rng.IntN(len(v))])
			}
			if w%12 == 11 {
				b.WriteString(".\r\n")
			} else {
				b.WriteByte(' ')
			}
		}
		if html {
			fmt.Fprintf(&b, "<a href=\"http://%s/x%d\">here</a></p></body></html>", dom, i)
		}
		fmt.Fprintf(&b, "\r\nref%d\r\n", i)
		items = append(items, Item{Name: fmt.Sprintf("synth/%d", i), Label: l, Data: []byte(b.String())})
	}
	return items
}

// TestLearnStreamMatchesOneByOne: Learner.LearnStream (moat learn:
// messages parsed and their features extracted ahead by parallel
// workers, lessons learned in order against the overlay, written in
// batches) leaves exactly the model that learning the same messages one
// by one with Classify.Learn leaves (in memory: TestLearnerMatchesOneByOne
// shows the SQL stores leave the same): same outcomes, same rows bit for
// bit, same Size and totals, same scores. The lessons repeat messages and
// move some to the other label; the model is learned in three runs: into
// an empty store, into a stored model read key by key, and into one read
// in a single pass (the overlay's full load).
func TestLearnStreamMatchesOneByOne(t *testing.T) { forEachBackend(t, testLearnStreamMatchesOneByOne) }

func testLearnStreamMatchesOneByOne(t *testing.T, b testBackend) {
	ctx := context.Background()
	items := synthRaw(100, 4)     // moat learn's test (cmd/moat) learns real mail
	held := items[len(items)-20:] // scored at the end, never learned
	items = items[:len(items)-20]
	var seq []Item
	for i, it := range items {
		seq = append(seq, it)
		if i%15 == 3 { // the same lesson again
			seq = append(seq, it)
		}
		if i%20 == 9 { // a correction: the other label
			mv := it
			mv.Label = 3 - it.Label
			seq = append(seq, mv)
		}
	}
	third := len(seq) / 3
	runs := []struct {
		name    string
		lessons []Item
		minLoad int // fullLoadMin during the run
	}{
		{"empty store", seq[:third], fullLoadMin},
		{"key by key", seq[third : 2*third], 1 << 30},
		{"full load", seq[2*third:], 256},
	}
	cfg := DefaultConfig()
	cfg.MinHam, cfg.MinSpam = 5, 5
	one, bulk := NewMemStore(), b.store(b.pools(t)(), SQLStoreOptions{})
	c1, err := New(cfg, one)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := New(cfg, bulk)
	defer func(m int) { fullLoadMin = m }(fullLoadMin)
	counts := map[LearnOutcome]int{}
	for _, run := range runs {
		fullLoadMin = run.minLoad
		var want []LearnOutcome
		for _, it := range run.lessons {
			o, err := c1.Learn(ctx, "", message.ParseBytes(it.Data, message.DefaultLimits()), it.Label)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, o)
			counts[o]++
		}
		ln := c2.NewLearner(23) // several commits per run
		var got []LearnOutcome
		var names []string
		err := ln.LearnStream(ctx, StreamOptions{Workers: 3, Window: 5}, func(push func(BulkItem) error) error {
			for _, it := range run.lessons {
				if err := push(BulkItem{Name: it.Name, Data: it.Data, Label: it.Label}); err != nil {
					return err
				}
			}
			return nil
		}, func(it BulkItem, o LearnOutcome) error {
			got = append(got, o)
			names = append(names, it.Name)
			return nil
		})
		if err == nil {
			err = ln.Flush(ctx)
		}
		if err != nil {
			t.Fatalf("%s: %v", run.name, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d outcomes, want %d", run.name, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] || names[i] != run.lessons[i].Name {
				t.Fatalf("%s: lesson %d: %s %v, one by one %s %v", run.name, i, names[i], got[i], run.lessons[i].Name, want[i])
			}
		}
	}
	if counts[Learned] == 0 || counts[AlreadyKnown] == 0 || counts[Moved] == 0 {
		t.Fatalf("outcomes %v: the sequence does not exercise duplicates and moves", counts)
	}
	var fps [][32]byte
	var ms []*message.Message
	for _, it := range append(items, held...) {
		m := message.ParseBytes(it.Data, message.DefaultLimits())
		ms = append(ms, m)
		fps = append(fps, m.Fingerprint)
	}
	for _, cl := range []*Classifier{c1, c1.words} {
		uniq := map[uint64]bool{}
		for _, m := range ms {
			for _, k := range cl.keys(cl.Features(m, false)) {
				uniq[k] = true
			}
		}
		if cl == c1 {
			for _, k := range stackKeys {
				uniq[k] = true
			}
		}
		keys := make([]uint64, 0, len(uniq))
		for k := range uniq {
			keys = append(keys, k)
		}
		sameSQLModel(t, one, bulk, cl.Scope(""), keys, fps)
	}
	if s1, s2 := mustSize(t, c1), mustSize(t, c2); s1 != s2 || s1 < 10000 {
		t.Fatalf("Size: one by one %d, stream %d", s1, s2)
	}
	for i, m := range ms[len(ms)-len(held):] {
		r1, err1 := c1.Classify(ctx, "", m, false)
		r2, err2 := c2.Classify(ctx, "", m, false)
		if err1 != nil || err2 != nil || r1.Prob != r2.Prob || r1.Ham != r2.Ham || r1.Spam != r2.Spam || !r1.Trained {
			t.Fatalf("held-out %d: one by one %+v %v, stream %+v %v", i, r1, err1, r2, err2)
		}
	}
}

func mustSize(t *testing.T, c *Classifier) int64 {
	t.Helper()
	n, err := c.Size(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLearnStreamStops: an error of the producer, of done, or a
// cancelled context stops LearnStream and is returned; the lessons
// learned before it are in the Learner (Flush writes them), none after.
// Over a store without bulk support (MemStore) it learns too.
func TestLearnStreamStops(t *testing.T) {
	ctx := context.Background()
	items := synthRaw(40, 9)
	produce := func(n int, fail error) func(push func(BulkItem) error) error {
		return func(push func(BulkItem) error) error {
			for _, it := range items[:n] {
				if err := push(BulkItem{Name: it.Name, Data: it.Data, Label: it.Label}); err != nil {
					return err
				}
			}
			return fail
		}
	}
	boom := errors.New("boom")
	for _, st := range []string{"sqlite", "mem"} {
		t.Run(st, func(t *testing.T) {
			newC := func() *Classifier {
				var store TokenStore = NewMemStore()
				if st == "sqlite" {
					store = testBackends[0].store(testBackends[0].pools(t)(), SQLStoreOptions{})
				}
				c, err := New(DefaultConfig(), store)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			total := func(c *Classifier) int64 {
				tot, err := c.Totals(ctx, "")
				if err != nil {
					t.Fatal(err)
				}
				return tot.Ham + tot.Spam
			}
			// The producer fails after 25 messages: 25 learned.
			c := newC()
			ln := c.NewLearner(0)
			if err := ln.LearnStream(ctx, StreamOptions{Window: 4}, produce(25, boom), nil); !errors.Is(err, boom) {
				t.Fatalf("producer error: got %v", err)
			}
			if err := ln.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if n := total(c); n != 25 {
				t.Fatalf("after a producer error: %d lessons stored, want 25", n)
			}
			// done fails on the 10th lesson: 10 learned, the producer is
			// stopped (it sees push fail) and LearnStream returns.
			c = newC()
			ln = c.NewLearner(0)
			seen := 0
			err := ln.LearnStream(ctx, StreamOptions{Window: 4}, produce(40, nil), func(BulkItem, LearnOutcome) error {
				if seen++; seen == 10 {
					return boom
				}
				return nil
			})
			if !errors.Is(err, boom) {
				t.Fatalf("done error: got %v", err)
			}
			if err := ln.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if n := total(c); n != 10 {
				t.Fatalf("after a done error: %d lessons stored, want 10", n)
			}
			// A cancelled context.
			cctx, cancel := context.WithCancel(ctx)
			c = newC()
			ln = c.NewLearner(0)
			err = ln.LearnStream(cctx, StreamOptions{}, produce(40, nil), func(BulkItem, LearnOutcome) error {
				cancel()
				return nil
			})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled: got %v", err)
			}
		})
	}
}

// TestOverlayRepeatedKeys: a batch that names a key twice is applied as
// the store applies it (the key's deltas added up first, then to the
// row), in an empty scope and over stored rows.
func TestOverlayRepeatedKeys(t *testing.T) {
	ctx := context.Background()
	pools := testBackends[0].pools(t)
	base := testBackends[0].store(pools(), SQLStoreOptions{})
	ref := testBackends[0].store(testBackends[0].pools(t)(), SQLStoreOptions{})
	batches := []Batch{
		{Deltas: []Delta{{Key: 1, W: 0.1, G: 0.3}, {Key: 2, Ham: 1}, {Key: 1, W: 0.7, G: 1e-17}, {Key: 3, W: 1}}, Totals: Totals{Ham: 1}},
		// Added one by one, 1 + 1e16 - 1e16 is 0; the store adds the
		// deltas first: 1 + 0.
		{Deltas: []Delta{{Key: 2, Ham: 1}, {Key: 3, W: 1e16}, {Key: 3, W: -1e16}, {Key: 4, Spam: 1}}, Totals: Totals{Spam: 1}},
		{Deltas: []Delta{{Key: 1, W: 0.2}, {Key: 2, Ham: -1}, {Key: 2, Ham: -1}, {Key: 4, Spam: -1}}, Totals: Totals{Ham: -1}},
	}
	for round := 0; round < 2; round++ { // into an empty scope, then over stored rows
		ov := newOverlay(base)
		for _, b := range batches {
			if err := ov.Update(ctx, "s", b); err != nil {
				t.Fatal(err)
			}
			if err := ref.Update(ctx, "s", Batch{Deltas: slices.Clone(b.Deltas), Totals: b.Totals}); err != nil {
				t.Fatal(err)
			}
		}
		if err := ov.flush(ctx); err != nil {
			t.Fatal(err)
		}
		keys := []uint64{1, 2, 3, 4}
		want, _ := ref.Get(ctx, "s", keys)
		got, _ := base.Get(ctx, "s", keys)
		for i := range keys {
			if want[i] != got[i] {
				t.Fatalf("round %d key %d: store %+v, overlay %+v", round, keys[i], want[i], got[i])
			}
		}
		ws, _ := ref.Size(ctx, "s")
		gs, _ := base.Size(ctx, "s")
		if ws != gs {
			t.Fatalf("round %d: size %d, overlay %d", round, ws, gs)
		}
	}
}

// TestMergeDeltas: mergeDeltas adds up the deltas of each key in their
// order, at the place of the key's first delta, as a map-based merge
// does; its reused index starts empty on every call (keys of one call
// are not seen in the next), whatever the sizes.
func TestMergeDeltas(t *testing.T) {
	ref := func(d []Delta) []Delta {
		idx := map[uint64]int{}
		var out []Delta
		for _, x := range d {
			if i, ok := idx[x.Key]; ok {
				out[i].Ham += x.Ham
				out[i].Spam += x.Spam
				out[i].W += x.W
				out[i].G += x.G
				continue
			}
			idx[x.Key] = len(out)
			out = append(out, x)
		}
		return out
	}
	r := rand.New(rand.NewPCG(3, 4))
	for call, n := range []int{1, 5, 3000, 40, 5000, 0, 700, 2, 3000} {
		d := make([]Delta, n)
		for i := range d {
			k := uint64(r.IntN(max(1, n/3))) // about three deltas a key
			if call%2 == 1 {
				k = r.Uint64() // mostly distinct, 0 included sometimes
			}
			d[i] = Delta{Key: k, Ham: int64(r.IntN(3)) - 1, Spam: 1, W: r.NormFloat64(), G: r.Float64() * 1e-9}
		}
		want := ref(d)
		got := mergeDeltas(slices.Clone(d))
		if !slices.Equal(got, want) {
			t.Fatalf("call %d (%d deltas): merged %d, want %d", call, n, len(got), len(want))
		}
		// Into a slice holding something already: appended after it.
		pre := []Delta{{Key: 7, W: 1}}
		if got := mergeDeltasInto(pre, d); !slices.Equal(got[1:], want) || got[0] != pre[0] {
			t.Fatalf("call %d: merging into a non-empty slice", call)
		}
	}
}
