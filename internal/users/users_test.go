package users_test

import (
	"context"
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

func TestUsersScopesSessions(t *testing.T) {
	ctx := context.Background()
	db := qtest.DB(t)
	if err := users.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	s := users.New(db)
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
}
