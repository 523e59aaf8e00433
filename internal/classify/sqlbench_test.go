package classify

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/store/sqlstore"
)

// trainedSQL returns a database holding a model trained on the first 1000
// messages of the corpus (trained in memory, then copied row by row), and
// messages to classify. kind is "shared" (SQLite as moat serve opens it:
// sqlstore, WAL, the shared pool), "plain" (SQLite as moat learn opens
// it: OpenSQLite) or "postgres" (sqlstore on a fresh database of
// MOAT_TEST_POSTGRES's server; skipped without it).
func trainedSQL(b *testing.B, kind string) (*SQLStore, []*message.Message) {
	b.Helper()
	all := corpus(b)
	items := all[:1000]
	ctx := context.Background()
	mem := NewMemStore()
	c, err := New(DefaultConfig(), mem)
	if err != nil {
		b.Fatal(err)
	}
	for _, it := range items {
		c.Learn(ctx, "", message.ParseBytes(it.Data, message.DefaultLimits()), it.Label)
	}
	path := filepath.Join(b.TempDir(), "m.db")
	var st *SQLStore
	switch kind {
	case "postgres":
		s, err := sqlstore.OpenPostgres(ctx, postgresDatabase(b))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		if err := MigrateDriver(ctx, s.DB(), s.Driver()); err != nil {
			b.Fatal(err)
		}
		st = NewSQLStoreWith(s.DB(), SQLStoreOptions{Driver: s.Driver()})
	case "shared":
		s, err := sqlstore.OpenSQLite(ctx, path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		if err := Migrate(ctx, s.DB()); err != nil {
			b.Fatal(err)
		}
		st = NewSQLStore(s.DB())
	default:
		db, err := OpenSQLite(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		if err := Migrate(ctx, db); err != nil {
			b.Fatal(err)
		}
		st = NewSQLStore(db)
	}
	for name, sc := range mem.scopes {
		var d []Delta
		for k, r := range sc.rows {
			d = append(d, Delta{Key: k, Ham: r.Ham, Spam: r.Spam, W: r.W, G: r.G})
		}
		if err := st.Update(ctx, name, Batch{Deltas: d, Totals: sc.totals}); err != nil {
			b.Fatal(err)
		}
	}
	// Messages the model has not seen, each classified once per pass
	// (with -benchtime up to 2000x: a stream of new mail).
	msgs := make([]*message.Message, 0, 2000)
	for _, it := range all[1000:min(len(all), 3000)] {
		msgs = append(msgs, message.ParseBytes(it.Data, message.DefaultLimits()))
	}
	return st, msgs
}

// BenchmarkClassifySQL classifies with a trained model in SQLite (and
// PostgreSQL) from many goroutines (as at end of DATA with 100 sessions):
// feature extraction, the store's reads and scoring.
func BenchmarkClassifySQL(b *testing.B) {
	for _, tc := range []struct {
		name, kind, user string
	}{{"shared", "shared", ""}, {"shared-user", "shared", "bob@example.com"}, {"plain", "plain", ""},
		{"postgres", "postgres", ""}, {"postgres-user", "postgres", "bob@example.com"}} {
		b.Run(tc.name, func(b *testing.B) {
			st, msgs := trainedSQL(b, tc.kind)
			c, err := New(DefaultConfig(), st)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var mu sync.Mutex
			next := 0
			b.SetParallelism(50) // 50 x GOMAXPROCS goroutines
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					mu.Lock()
					m := msgs[next%len(msgs)]
					next++
					mu.Unlock()
					r, err := c.Classify(ctx, tc.user, m, false)
					if err != nil || !r.Trained {
						b.Errorf("classify: %+v %v", r, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			if cs, ok := any(st).(interface{ CacheStats() (int64, int64) }); ok {
				h, m := cs.CacheStats()
				b.ReportMetric(float64(h)/float64(max(h+m, 1)), "cache-hit")
			}
		})
	}
}

// BenchmarkLearnBulk learns the whole corpus into a fresh SQLite file
// with a Learner, as moat learn does (parse, features, overlay, flush):
// one iteration is the whole corpus. "serial" parses and learns each
// message in turn (Learner.Learn), "stream" parses and extracts ahead in
// workers (Learner.LearnStream, moat learn); "warm" is stream learning
// every other message into a model that learned the rest already (rows
// are read from the database).
func BenchmarkLearnBulk(b *testing.B) {
	all := corpus(b)
	ctx := context.Background()
	stream := func(ln *Learner, items []Item) error {
		return ln.LearnStream(ctx, StreamOptions{}, func(push func(BulkItem) error) error {
			for _, it := range items {
				if err := push(BulkItem{Name: it.Name, Data: it.Data, Label: it.Label}); err != nil {
					return err
				}
			}
			return nil
		}, nil)
	}
	for _, mode := range []string{"serial", "stream", "warm"} {
		b.Run(mode, func(b *testing.B) {
			items := all
			var first []Item
			if mode == "warm" {
				items, first = nil, nil
				for i, it := range all {
					if i%2 == 0 {
						first = append(first, it)
					} else {
						items = append(items, it)
					}
				}
			}
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				db, err := OpenSQLite(filepath.Join(b.TempDir(), "m.db"))
				if err != nil {
					b.Fatal(err)
				}
				if err := Migrate(ctx, db); err != nil {
					b.Fatal(err)
				}
				c, err := New(DefaultConfig(), NewSQLStore(db))
				if err != nil {
					b.Fatal(err)
				}
				if first != nil {
					ln := c.NewLearner(0)
					if err := stream(ln, first); err != nil {
						b.Fatal(err)
					}
					if err := ln.Flush(ctx); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				ln := c.NewLearner(0)
				if mode == "serial" {
					for _, it := range items {
						if _, err := ln.Learn(ctx, "", message.ParseBytes(it.Data, message.DefaultLimits()), it.Label); err != nil {
							b.Fatal(err)
						}
					}
				} else if err := stream(ln, items); err != nil {
					b.Fatal(err)
				}
				if err := ln.Flush(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				db.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
