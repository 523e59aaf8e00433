package users_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/quarantine/qtest"
	"moat.dev/moat/internal/users"
)

func TestPasswordHash(t *testing.T) {
	h, err := users.HashPassword("s3cret-password")
	if err != nil || !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q %v", h, err)
	}
	if !users.VerifyPassword(h, "s3cret-password") || users.VerifyPassword(h, "s3cret-passwore") {
		t.Error("verify wrong")
	}
	for _, bad := range []string{"", "$argon2id$v=19$m=99999999,t=2,p=1$AAAA$AAAAAAAAAAAAAAAAAAAAAA", "$bcrypt$x", h[:len(h)-3]} {
		if users.VerifyPassword(bad, "s3cret-password") {
			t.Errorf("malformed hash %q verified", bad)
		}
	}
}

// backends runs f against SQLite and against PostgreSQL (a fresh
// database per run; skipped without MOAT_TEST_POSTGRES unless
// MOAT_REQUIRE_TOOLS=1).
func backends(t *testing.T, f func(t *testing.T, db *sql.DB, driver string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, qtest.DB(t), "sqlite") })
	t.Run("postgres", func(t *testing.T) { f(t, qtest.PostgresDB(t), "postgres") })
}

func TestUsersScopesSessions(t *testing.T) { backends(t, testUsersScopesSessions) }

func testUsersScopesSessions(t *testing.T, db *sql.DB, driver string) {
	ctx := context.Background()
	if err := users.MigrateDriver(ctx, db, driver); err != nil {
		t.Fatal(err)
	}
	// Migrating twice is harmless (every start migrates).
	if err := users.MigrateDriver(ctx, db, driver); err != nil {
		t.Fatal(err)
	}
	s := users.NewDriver(db, driver)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.SetClock(func() time.Time { return now })
	u := &users.User{Name: " Erin ", Role: users.EndUser, Addresses: []string{"Erin@A.example", "e@a.example", "e@a.example"}}
	if err := s.Create(ctx, u, "password-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, &users.User{Name: "erin", Role: users.EndUser}, "password-1"); !errors.Is(err, users.ErrExists) {
		t.Errorf("duplicate: %v", err)
	}
	if err := s.Create(ctx, &users.User{Name: "x", Role: users.EndUser}, "short"); err == nil {
		t.Error("short password accepted")
	}
	got, err := s.Authenticate(ctx, "ERIN", "password-1")
	if err != nil || got.Name != "erin" || len(got.Addresses) != 2 {
		t.Fatalf("auth: %+v %v", got, err)
	}
	if _, err := s.Authenticate(ctx, "erin", "password-2"); !errors.Is(err, users.ErrBadCredentials) {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := s.Authenticate(ctx, "nobody", "password-1"); !errors.Is(err, users.ErrBadCredentials) {
		t.Errorf("unknown user: %v", err)
	}
	sc, _ := s.Scope(ctx, got)
	if !sc.Allows("a.example", "ERIN@a.example") || sc.Allows("a.example", "other@a.example") {
		t.Errorf("end user scope %+v", sc)
	}
	p := &users.User{Name: "p", Role: users.PartnerAdmin, Partner: "acme"}
	s.Create(ctx, p, "password-1")
	s.SetPartnerDomains(ctx, "acme", []string{"B.example"})
	if sc, _ := s.Scope(ctx, p); !sc.Allows("b.example", "x@b.example") || sc.Allows("a.example", "erin@a.example") {
		t.Errorf("partner scope %+v", sc)
	}
	tok, _, err := s.CreateSession(ctx, got, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if sess, err := s.Session(ctx, tok); err != nil || sess.User.Name != "erin" || len(sess.CSRF) != 64 {
		t.Fatalf("session: %+v %v", sess, err)
	}
	if _, err := s.Session(ctx, tok+"x"); !errors.Is(err, users.ErrNotFound) {
		t.Errorf("wrong token: %v", err)
	}
	now = now.Add(2 * time.Hour)
	if _, err := s.Session(ctx, tok); !errors.Is(err, users.ErrNotFound) {
		t.Errorf("expired session: %v", err)
	}
	tok, _, _ = s.CreateSession(ctx, got, time.Hour)
	got.Disabled = true
	if err := s.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, tok); !errors.Is(err, users.ErrNotFound) {
		t.Errorf("session of disabled user: %v", err)
	}
	if _, err := s.Authenticate(ctx, "erin", "password-1"); !errors.Is(err, users.ErrBadCredentials) {
		t.Errorf("disabled user logged in: %v", err)
	}
	if g, err := s.Get(ctx, got.ID); err != nil || !g.Disabled || g.Name != "erin" || !g.Created.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("get disabled user: %+v %v", g, err)
	}
	got.Disabled = false
	if err := s.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, "erin", "password-1"); err != nil {
		t.Errorf("re-enabled user: %v", err)
	}
	// IDs are distinct and Delete removes the user with its scopes.
	if p.ID == 0 || p.ID == got.ID {
		t.Errorf("ids %d %d", p.ID, got.ID)
	}
	if err := s.Delete(ctx, "erin"); err != nil {
		t.Fatal(err)
	}
	if all, err := s.List(ctx); err != nil || len(all) != 1 || all[0].Name != "p" || all[0].Partner != "acme" {
		t.Errorf("list after delete: %v %v", all, err)
	}
	if err := s.Create(ctx, &users.User{Name: "erin", Role: users.DomainAdmin, Domains: []string{"A.example"}}, "password-2"); err != nil {
		t.Fatalf("re-create: %v", err)
	}
	if u, err := s.ByName(ctx, "erin"); err != nil || len(u.Addresses) != 0 || len(u.Domains) != 1 || u.Domains[0] != "a.example" {
		t.Errorf("re-created user kept old scopes: %+v %v", u, err)
	}
}
