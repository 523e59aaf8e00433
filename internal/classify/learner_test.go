package classify

import (
	"context"
	"testing"

	"moat.dev/moat/internal/message"
)

// sameSQLModel fails unless two SQL stores hold the same rows (bit for
// bit), totals, sizes and lessons in scope.
func sameSQLModel(t *testing.T, a, b *SQLStore, scope string, keys []uint64, fps [][32]byte) {
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
