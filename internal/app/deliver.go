package app

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/relay"
)

const dsnPrefix = "dsn:"

// deliverer hands the queue's deliveries to the relay. Recipients without
// a customer domain (the senders of bounced mail, for DSNs) are grouped by
// their own domain and routed with the "dsn:" prefix.
type deliverer struct{ a *App }

func (d deliverer) Deliver(ctx context.Context, del *queue.Delivery) []queue.Result {
	if del.Domain != "" {
		return d.a.relay.Deliver(ctx, del)
	}
	groups := map[string][]string{}
	for _, r := range del.Rcpts {
		dom := ""
		if i := strings.LastIndexByte(r, '@'); i >= 0 {
			dom = strings.ToLower(r[i+1:])
		}
		groups[dom] = append(groups[dom], r)
	}
	var out []queue.Result
	for dom, rcpts := range groups {
		sub := *del
		sub.Domain = dsnPrefix + dom
		sub.Rcpts = rcpts
		out = append(out, d.a.relay.Deliver(ctx, &sub)...)
	}
	return out
}

// mxRoute routes a DSN to a non-customer domain by its MX records
// (RFC 5321 5.1), never back to Moat itself.
func (a *App) mxRoute(ctx context.Context, domain string) (*relay.Route, error) {
	if domain == "" {
		return nil, fmt.Errorf("%w: empty domain", relay.ErrNoRoute)
	}
	mxs, err := a.resolver.LookupMX(ctx, domain)
	if err != nil && !dnsx.IsNotFound(err) {
		return nil, err // temporary: retried
	}
	r := &relay.Route{Domain: domain, TLS: relay.TLSOpportunistic}
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	for _, mx := range mxs {
		host := strings.TrimSuffix(strings.ToLower(mx.Host), ".")
		if host == "" { // null MX (RFC 7505): the domain accepts no mail
			return nil, fmt.Errorf("%w: %s has a null MX", relay.ErrNoRoute, domain)
		}
		if a.isOwnHost(host) {
			continue
		}
		r.Backends = append(r.Backends, relay.Backend{Host: host, Port: 25})
	}
	if len(mxs) == 0 { // implicit MX: the domain's own address
		r.Backends = []relay.Backend{{Host: domain, Port: 25}}
	}
	if len(r.Backends) == 0 {
		return nil, fmt.Errorf("%w: every MX of %s is Moat itself", relay.ErrNoRoute, domain)
	}
	return r, nil
}

func (a *App) isOwnHost(host string) bool {
	if strings.EqualFold(host, a.cfg.Hostname) {
		return true
	}
	for _, h := range a.cfg.Gateway.Hostnames {
		if strings.EqualFold(strings.TrimSuffix(h, "."), host) {
			return true
		}
	}
	return false
}

var _ = errors.New
