// Package store holds Moat's per-customer data: customer domains with their
// routes to backends, and recipient tables. The Store interface has two
// implementations in package sqlstore: embedded SQLite (the default, pure
// Go, no external server) and PostgreSQL for scale-out. Package storetest is
// the conformance suite both pass.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNotFound is returned when a domain or recipient does not exist.
var ErrNotFound = errors.New("store: not found")

// Backend is one of a customer's own mail servers, in order of preference.
type Backend struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

func (b Backend) String() string {
	if strings.Contains(b.Host, ":") {
		return "[" + b.Host + "]:" + strconv.Itoa(b.Port)
	}
	return b.Host + ":" + strconv.Itoa(b.Port)
}

// ParseBackend parses "host:port" or "host" (port 25) or "[v6]:port".
func ParseBackend(s string) (Backend, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Backend{}, errors.New("empty backend address")
	}
	host, port := s, "25"
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return Backend{}, fmt.Errorf("backend %q: missing ]", s)
		}
		host = s[1:end]
		if rest := s[end+1:]; rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return Backend{}, fmt.Errorf("backend %q: junk after ]", s)
			}
			port = rest[1:]
		}
	} else if i := strings.LastIndex(s, ":"); i >= 0 {
		if strings.Count(s, ":") > 1 {
			return Backend{}, fmt.Errorf("backend %q: IPv6 addresses need brackets, e.g. [2001:db8::1]:25", s)
		}
		host, port = s[:i], s[i+1:]
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return Backend{}, fmt.Errorf("backend %q: port must be 1-65535", s)
	}
	if host == "" {
		return Backend{}, fmt.Errorf("backend %q: empty host", s)
	}
	return Backend{Host: host, Port: p}, nil
}

// Recipient verification modes of a domain.
const (
	RecipientsAny     = "any"     // accept every local part (the backend decides; avoid: causes backscatter)
	RecipientsTable   = "table"   // only recipients in the domain's table
	RecipientsCallout = "callout" // ask the backend with an SMTP callout (cached)
)

// Domain is one customer domain.
type Domain struct {
	Name          string    `json:"name"`    // lower-case, no trailing dot
	Partner       string    `json:"partner"` // owning partner (ISP/reseller), "" for the site
	Backends      []Backend `json:"backends"`
	TLS           string    `json:"tls"` // opportunistic | required | none
	MaxConns      int       `json:"max_conns"`
	RecipientMode string    `json:"recipient_mode"`
	CatchAll      bool      `json:"catch_all"`
	// Policy is the domain's policy override as JSON (see package policy),
	// "" = the site policy.
	Policy string `json:"policy,omitempty"`
}

// Recipient is one valid address of a table-verified domain.
type Recipient struct {
	Domain string `json:"domain"`
	Local  string `json:"local"`  // lower-case local part without +tag
	Kind   string `json:"kind"`   // account | alias | list
	Target string `json:"target"` // for aliases: where it points (informational)
}

// Store is the per-customer data store.
type Store interface {
	Domain(ctx context.Context, name string) (*Domain, error) // ErrNotFound
	Domains(ctx context.Context) ([]Domain, error)
	PutDomain(ctx context.Context, d *Domain) error
	DeleteDomain(ctx context.Context, name string) error

	RecipientExists(ctx context.Context, domain, local string) (bool, error)
	Recipients(ctx context.Context, domain string) ([]Recipient, error)
	PutRecipient(ctx context.Context, r Recipient) error
	DeleteRecipient(ctx context.Context, domain, local string) error // ErrNotFound
	// ReplaceRecipients makes list the domain's whole recipient table in
	// one transaction (of two concurrent replacements, one wins whole),
	// and counts what changed.
	ReplaceRecipients(ctx context.Context, domain string, list []Recipient) (added, updated, removed int, err error)

	// DB is the underlying database, for components that keep their own
	// tables (classifier tokens, quarantine index, greylisting).
	DB() *sql.DB
	// Driver is "sqlite" or "postgres".
	Driver() string
	Close() error
}
