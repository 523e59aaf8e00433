package app

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/store"
)

// domainCache is the hot-path view of the store: customer domains, their
// routes and parsed policies, kept for a short TTL so the SMTP session never
// waits on the database for every RCPT, while admin changes still take
// effect within seconds without a restart.
type domainCache struct {
	st   store.Store
	site *policy.Policy
	ttl  time.Duration
	log  *slog.Logger

	mu      sync.Mutex
	entries map[string]cachedDomain
}

type cachedDomain struct {
	d       *store.Domain // nil: not a customer domain
	pol     *policy.Policy
	expires time.Time
}

func newDomainCache(st store.Store, site *policy.Policy, ttl time.Duration, log *slog.Logger) *domainCache {
	return &domainCache{st: st, site: site, ttl: ttl, log: log, entries: map[string]cachedDomain{}}
}

// get returns the domain (nil when it is not one of ours) and its policy.
// A store failure is returned as an error (the SMTP layer answers 4xx).
func (c *domainCache) get(ctx context.Context, name string) (*store.Domain, *policy.Policy, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	now := time.Now()
	c.mu.Lock()
	e, ok := c.entries[name]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.d, e.pol, nil
	}
	d, err := c.st.Domain(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		d, err = nil, nil
	}
	if err != nil {
		if ok { // serve stale data rather than refuse mail while the store is slow
			return e.d, e.pol, nil
		}
		return nil, nil, err
	}
	pol := c.site
	if d != nil && d.Policy != "" {
		p := *c.site
		p.Layers = map[string]policy.Layer{}
		for k, v := range c.site.Layers {
			p.Layers[k] = v
		}
		if err := json.Unmarshal([]byte(d.Policy), &p); err != nil {
			c.log.Error("domain policy unreadable; using the site policy", "domain", name, "err", err)
		} else {
			pol = &p
		}
	}
	c.mu.Lock()
	if len(c.entries) > 100000 {
		c.entries = map[string]cachedDomain{}
	}
	c.entries[name] = cachedDomain{d: d, pol: pol, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return d, pol, nil
}

// policy returns the policy for a domain, the site policy for "" or on error.
func (c *domainCache) policy(domain string) *policy.Policy {
	if domain == "" {
		return c.site
	}
	_, p, err := c.get(context.Background(), domain)
	if err != nil || p == nil {
		return c.site
	}
	return p
}
