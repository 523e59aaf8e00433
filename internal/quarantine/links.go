package quarantine

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LinkAction is what a one-click digest link does.
type LinkAction string

const (
	LinkRelease      LinkAction = "release"       // release the message
	LinkReleaseTeach LinkAction = "release_teach" // release and teach the classifier it is ham
	LinkAllow        LinkAction = "allow"         // always allow the sender (and release the message)
	LinkBlock        LinkAction = "block"         // block the sender (and delete the message)
)

// Valid reports whether a is a known action.
func (a LinkAction) Valid() bool {
	switch a {
	case LinkRelease, LinkReleaseTeach, LinkAllow, LinkBlock:
		return true
	}
	return false
}

// Describe is a human sentence for the confirmation page.
func (a LinkAction) Describe() string {
	switch a {
	case LinkRelease:
		return "Release this message to your mailbox"
	case LinkReleaseTeach:
		return "Release this message and teach the filter it is not spam"
	case LinkAllow:
		return "Always allow this sender and release this message"
	case LinkBlock:
		return "Block this sender and delete this message"
	}
	return string(a)
}

// Link is the content of a signed one-click link.
type Link struct {
	Action  LinkAction
	EntryID string
	Rcpt    string
	Expires time.Time
}

// Link errors. The web UI shows one generic refusal for all of them.
var (
	ErrLinkInvalid = errors.New("quarantine: invalid link")
	ErrLinkExpired = errors.New("quarantine: link expired")
	ErrLinkUsed    = errors.New("quarantine: link already used")
)

const linkVersion = "1"

func (s *Store) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte("moat quarantine link\x00"))
	m.Write(payload)
	return m.Sum(nil)
}

// SignLink returns the URL-safe token for l: the payload and an HMAC-SHA256
// over it, so neither the action, the entry, the recipient nor the expiry
// can be changed.
func (s *Store) SignLink(l Link) string {
	payload := strings.Join([]string{linkVersion, string(l.Action), l.EntryID, strconv.FormatInt(l.Expires.Unix(), 10), l.Rcpt}, "|")
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(s.mac([]byte(payload)))
}

// ParseLink verifies the signature and expiry of a token (it does not
// consume it).
func (s *Store) ParseLink(tok string) (*Link, error) {
	if len(tok) > 2048 {
		return nil, ErrLinkInvalid
	}
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return nil, ErrLinkInvalid
	}
	enc := base64.RawURLEncoding
	payload, err := enc.DecodeString(p)
	if err != nil {
		return nil, ErrLinkInvalid
	}
	mac, err := enc.DecodeString(sig)
	if err != nil || !hmac.Equal(mac, s.mac(payload)) {
		return nil, ErrLinkInvalid
	}
	f := strings.SplitN(string(payload), "|", 5)
	if len(f) != 5 || f[0] != linkVersion {
		return nil, ErrLinkInvalid
	}
	exp, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return nil, ErrLinkInvalid
	}
	l := &Link{Action: LinkAction(f[1]), EntryID: f[2], Expires: time.Unix(exp, 0), Rcpt: f[4]}
	if !l.Action.Valid() || l.EntryID == "" || l.Rcpt == "" {
		return nil, ErrLinkInvalid
	}
	if !s.now().Before(l.Expires) {
		return l, ErrLinkExpired
	}
	return l, nil
}

func linkHash(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// CheckLink verifies a token and that it is unused and its message is
// still there; it returns the link and the entry for a confirmation page.
func (s *Store) CheckLink(ctx context.Context, tok string) (*Link, *Entry, error) {
	l, err := s.ParseLink(tok)
	if err != nil {
		return nil, nil, err
	}
	var n int
	if err := s.db.QueryRowContext(ctx, s.q.linkUsed, linkHash(tok)).Scan(&n); err != nil {
		return nil, nil, err
	}
	if n > 0 {
		return nil, nil, ErrLinkUsed
	}
	e, err := s.Get(ctx, l.EntryID)
	if err != nil {
		return nil, nil, err
	}
	if !strings.EqualFold(e.Rcpt, l.Rcpt) {
		return nil, nil, ErrLinkInvalid
	}
	return l, e, nil
}

// RedeemLink verifies a token, marks it used (a token works once), and
// performs its action. A temporary failure (queue down) un-marks it so the
// user can try again.
func (s *Store) RedeemLink(ctx context.Context, tok string) (*Link, *Entry, error) {
	l, e, err := s.CheckLink(ctx, tok)
	if err != nil {
		return nil, nil, err
	}
	res, err := s.db.ExecContext(ctx, s.q.useLink,
		linkHash(tok), s.now().Unix(), l.Expires.Unix())
	if err != nil {
		return nil, nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, nil, ErrLinkUsed
	}
	by := "link:" + l.Rcpt
	switch l.Action {
	case LinkRelease, LinkReleaseTeach:
		_, err = s.Release(ctx, e.ID, ReleaseOptions{By: by, Teach: l.Action == LinkReleaseTeach})
	case LinkAllow:
		if e.From == "" {
			err = errors.New("quarantine: null sender cannot be allowed")
			break
		}
		if err = s.Prefs.AllowSender(ctx, e.Rcpt, e.From, by); err == nil && e.State == Held {
			_, err = s.Release(ctx, e.ID, ReleaseOptions{By: by})
		}
	case LinkBlock:
		if e.From == "" {
			err = errors.New("quarantine: null sender cannot be blocked")
			break
		}
		if err = s.Prefs.BlockSender(ctx, e.Rcpt, e.From, by); err == nil && e.State == Held {
			err = s.Delete(ctx, e.ID, by)
		}
	}
	if err != nil && !errors.Is(err, ErrNotHeld) && !errors.Is(err, ErrInfected) {
		s.db.ExecContext(context.WithoutCancel(ctx), s.q.unuseLink, linkHash(tok))
		return l, e, fmt.Errorf("quarantine: link %s: %w", l.Action, err)
	}
	return l, e, err
}
