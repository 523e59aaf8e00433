// Package storetest is the conformance suite every store.Store backend
// passes, in the spirit of testing/fstest.TestFS.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"moat.dev/moat/internal/store"
)

// Run runs the suite against a fresh, empty store made by open.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	t.Run("Domains", func(t *testing.T) {
		s := open(t)
		if _, err := s.Domain(ctx, "example.com"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing domain: got %v, want ErrNotFound", err)
		}
		d := &store.Domain{Name: "Example.COM.", Partner: "isp1",
			Backends: []store.Backend{{Host: "10.0.0.1", Port: 2525}, {Host: "backup.example.net", Port: 25}},
			TLS:      "required", MaxConns: 5, RecipientMode: store.RecipientsTable, CatchAll: true, Policy: `{"tag_score":4}`}
		if err := s.PutDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
		got, err := s.Domain(ctx, "EXAMPLE.com")
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "example.com" || got.Partner != "isp1" || len(got.Backends) != 2 || got.Backends[0].Port != 2525 ||
			got.Backends[1].Host != "backup.example.net" || got.TLS != "required" || got.MaxConns != 5 ||
			got.RecipientMode != store.RecipientsTable || !got.CatchAll || got.Policy != `{"tag_score":4}` {
			t.Fatalf("round trip: got %+v", got)
		}
		// Update in place.
		d.TLS = "none"
		d.Backends = d.Backends[:1]
		if err := s.PutDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Domain(ctx, "example.com")
		if got.TLS != "none" || len(got.Backends) != 1 {
			t.Fatalf("update: got %+v", got)
		}
		if err := s.PutDomain(ctx, &store.Domain{Name: "b.example"}); err != nil {
			t.Fatal(err)
		}
		all, err := s.Domains(ctx)
		if err != nil || len(all) != 2 || all[0].Name != "b.example" || all[0].RecipientMode != store.RecipientsAny {
			t.Fatalf("list: %v %+v", err, all)
		}
		if err := s.PutDomain(ctx, &store.Domain{Name: " "}); err == nil {
			t.Fatal("empty domain name accepted")
		}
		if err := s.DeleteDomain(ctx, "b.example"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteDomain(ctx, "b.example"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
	})
	t.Run("Recipients", func(t *testing.T) {
		s := open(t)
		if err := s.PutDomain(ctx, &store.Domain{Name: "example.com", RecipientMode: store.RecipientsTable}); err != nil {
			t.Fatal(err)
		}
		for _, r := range []store.Recipient{{Domain: "example.com", Local: "Alice"}, {Domain: "example.com", Local: "sales", Kind: "alias", Target: "alice@example.com"}} {
			if err := s.PutRecipient(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		for local, want := range map[string]bool{"alice": true, "ALICE": true, "sales": true, "bob": false} {
			ok, err := s.RecipientExists(ctx, "Example.com", local)
			if err != nil || ok != want {
				t.Errorf("RecipientExists(%q) = %v, %v; want %v", local, ok, err, want)
			}
		}
		list, err := s.Recipients(ctx, "example.com")
		if err != nil || len(list) != 2 || list[1].Kind != "alias" {
			t.Fatalf("Recipients: %v %+v", err, list)
		}
		if err := s.DeleteRecipient(ctx, "example.com", "sales"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteRecipient(ctx, "example.com", "sales"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
		if err := s.PutRecipient(ctx, store.Recipient{Domain: "nope.example", Local: "x"}); err == nil {
			t.Fatal("recipient of an unknown domain accepted")
		}
		if err := s.DeleteDomain(ctx, "example.com"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := s.RecipientExists(ctx, "example.com", "alice"); ok {
			t.Fatal("recipients survive their domain")
		}
	})
	t.Run("ReplaceRecipients", func(t *testing.T) {
		s := open(t)
		if err := s.PutDomain(ctx, &store.Domain{Name: "example.com", RecipientMode: store.RecipientsTable}); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"alice", "bob"} {
			if err := s.PutRecipient(ctx, store.Recipient{Domain: "example.com", Local: l}); err != nil {
				t.Fatal(err)
			}
		}
		a, u, r, err := s.ReplaceRecipients(ctx, "Example.com", []store.Recipient{{Local: "Alice"}, {Local: "bob", Kind: "alias", Target: "alice@example.com"}, {Local: "carol"}})
		if err != nil || a != 1 || u != 1 || r != 0 {
			t.Fatalf("replace: added %d updated %d removed %d, %v; want 1 1 0", a, u, r, err)
		}
		if _, _, r, err = s.ReplaceRecipients(ctx, "example.com", []store.Recipient{{Local: "carol"}}); err != nil || r != 2 {
			t.Fatalf("replace to one: removed %d, %v; want 2", r, err)
		}
		// Concurrent replacements: one list wins whole, never a mixture.
		lists := make([][]store.Recipient, 2)
		for i, p := range []string{"x", "y"} {
			for j := range 40 {
				lists[i] = append(lists[i], store.Recipient{Local: fmt.Sprintf("%s%02d", p, j)})
			}
		}
		for round := range 3 {
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i := range lists {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _, _, errs[i] = s.ReplaceRecipients(ctx, "example.com", lists[i])
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			got, err := s.Recipients(ctx, "example.com")
			if err != nil {
				t.Fatal(err)
			}
			var x, y int
			for _, r := range got {
				switch r.Local[0] {
				case 'x':
					x++
				case 'y':
					y++
				}
			}
			if len(got) != 40 || (x != 40 && y != 40) {
				t.Fatalf("round %d: %d recipients (%d x, %d y), want one whole list", round, len(got), x, y)
			}
		}
	})
}
