package relay

import (
	"context"
	"errors"
	"fmt"

	"moat.dev/moat/internal/verdict"
)

// Callout asks the route's backends, in order, whether they would accept
// rcpt from from: EHLO, MAIL, RCPT, RSET, QUIT, without DATA. It returns
// the first answering backend's reply to RCPT (or to MAIL, if MAIL was
// refused), and an error when no backend answered. It uses DefaultConfig;
// the context bounds the whole exchange.
func Callout(ctx context.Context, route *Route, from, rcpt string) (verdict.Reply, error) {
	cfg := DefaultConfig()
	return callout(ctx, &cfg, nil, route, from, rcpt)
}

// Callout is the package Callout with this Relay's configuration (host
// name, timeouts, CA file). It does not use the delivery connection pool,
// so a callout never disturbs a delivery in progress.
func (r *Relay) Callout(ctx context.Context, route *Route, from, rcpt string) (verdict.Reply, error) {
	return callout(ctx, &r.cfg, r, route, from, rcpt)
}

func callout(ctx context.Context, cfg *Config, r *Relay, route *Route, from, rcpt string) (verdict.Reply, error) {
	if route == nil || len(route.Backends) == 0 {
		return verdict.Reply{}, fmt.Errorf("relay: callout: %w", ErrNoRoute)
	}
	tmp := &Relay{cfg: *cfg}
	if r != nil {
		tmp = r
	}
	var errs []error
	for _, b := range route.Backends {
		c, err := dial(ctx, cfg, b.addr(), dialOptions{tlsMode: tlsMode(route), tlsConf: tmp.tlsConfig(route, b)})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.addr(), err))
			continue
		}
		reply, err := calloutOn(ctx, cfg, c, from, rcpt)
		if err != nil {
			c.nc.Close()
			errs = append(errs, fmt.Errorf("%s: %w", b.addr(), err))
			continue
		}
		c.quit()
		return reply, nil
	}
	return verdict.Reply{}, fmt.Errorf("relay: callout: no backend answered: %w", errors.Join(errs...))
}

func calloutOn(ctx context.Context, cfg *Config, c *smtpConn, from, rcpt string) (verdict.Reply, error) {
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(timeInPast) })
	defer stop()
	mr, err := c.cmd(cfg.CommandTimeout, "MAIL FROM:<"+from+">")
	if err != nil {
		return verdict.Reply{}, err
	}
	if mr.Code/100 != 2 {
		return mr, nil
	}
	rr, err := c.cmd(cfg.CommandTimeout, "RCPT TO:<"+rcpt+">")
	if err != nil {
		return verdict.Reply{}, err
	}
	c.cmd(cfg.CommandTimeout, "RSET")
	return rr, nil
}
