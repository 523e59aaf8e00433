// Package dnsbl is layer 2: the client address is looked up in any number
// of DNS block and allow lists at once; the weights of the listings are
// summed postscreen-style. At or above reject_threshold the layer gives a
// hard 554 5.7.1 naming the lists; below it the listings are scores.
//
// Each zone is self-tested in the background (and on demand): its test
// entry must be listed. A zone that answers "refused / rate limited / open
// resolver", does not list its test entry, or times out is disabled (it
// contributes nothing: fail open for that zone) until it answers correctly
// again. A DNS failure is never read as "listed".
package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// FutureName is the Conn future holding this check's *Lookup.
const FutureName = "dnsbl"

// maxDownRetry bounds how long a disabled zone goes without a re-test
// while clients are being looked up.
const maxDownRetry = 30 * time.Second

// Deps are the check's collaborators.
type Deps struct {
	Resolver dnsx.Resolver
	Log      *slog.Logger          // nil: discard
	Metrics  prometheus.Registerer // nil: no metrics
}

// Check is the dnsbl check.
type Check struct {
	cfg       Config
	r         dnsx.Resolver
	log       *slog.Logger
	zones     []*zoneState
	up        *prometheus.GaugeVec
	listed    *prometheus.CounterVec
	zoneError *prometheus.CounterVec
	// downRetry is how soon a client lookup re-tests a disabled zone
	// (inline, before skipping it), so a zone disabled by a passing
	// resolver outage is back within seconds rather than at the next
	// self_test_interval.
	downRetry time.Duration
}

type zoneState struct {
	*zone
	up      atomic.Bool
	testing atomic.Bool
	// lastTest is when the zone's test entry was last queried (UnixNano).
	lastTest atomic.Int64
	mu       sync.Mutex
	reason   string // why it is down
}

var _ pipeline.ConnChecker = (*Check)(nil)

// New builds the check. Zones start enabled; call SelfTest or Run to test
// them.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil {
		return nil, errors.New("dnsbl: Deps.Resolver is required")
	}
	k := &Check{cfg: cfg, r: deps.Resolver, log: deps.Log, downRetry: min(cfg.SelfTestInterval, maxDownRetry)}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	k.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "moat_dnsbl_zone_up",
		Help: "1 when the DNSBL zone passes its self-test and is used, 0 when disabled."}, []string{"zone"})
	k.listed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_dnsbl_listed_total",
		Help: "Client lookups that found the client listed, by zone."}, []string{"zone"})
	k.zoneError = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_dnsbl_errors_total",
		Help: "Client lookups that failed (timeout, SERVFAIL, refused code), by zone."}, []string{"zone"})
	if deps.Metrics != nil {
		for _, c := range []prometheus.Collector{k.up, k.listed, k.zoneError} {
			if err := deps.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("dnsbl: register metrics: %w", err)
			}
		}
	}
	for _, z := range cfg.Zones {
		cz, _ := compileZone(z)
		zs := &zoneState{zone: cz}
		zs.up.Store(true)
		k.up.WithLabelValues(cz.name).Set(1)
		k.zones = append(k.zones, zs)
	}
	return k, nil
}

// Name returns the layer name.
func (*Check) Name() string { return "dnsbl" }

// Listing is one zone's answer for a client.
type Listing struct {
	Zone    string
	Allow   bool
	Codes   []netip.Addr // the answers
	Symbols []verdict.Symbol
	Weight  float64 // sum of the symbols' scores
}

// Lookup is the result of querying every enabled zone for one client.
type Lookup struct {
	Listings []Listing
	Sum      float64
	Errors   []error // zones that could not be queried
	Skipped  []string
}

// Start starts (or returns) the connection's dnsbl future, so the queries
// run while the greeting is sent. The future's value is a *Lookup.
func (k *Check) Start(c *pipeline.Conn) *pipeline.Future {
	return c.Future(FutureName, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Timeout)
		defer cancel()
		return k.Query(ctx, c.IP), nil
	})
}

// Query looks ip up in every enabled zone concurrently.
func (k *Check) Query(ctx context.Context, ip netip.Addr) *Lookup {
	ip = ip.Unmap()
	out := &Lookup{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, z := range k.zones {
		if ip.Is6() && z.skip6 {
			continue
		}
		wg.Add(1)
		go func(z *zoneState) {
			defer wg.Done()
			if !z.up.Load() && !k.retestDown(ctx, z) {
				mu.Lock()
				out.Skipped = append(out.Skipped, z.name)
				mu.Unlock()
				return
			}
			l, err := k.queryZone(ctx, z, ip)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out.Errors = append(out.Errors, err)
				return
			}
			if l != nil {
				out.Listings = append(out.Listings, *l)
				out.Sum += l.Weight
			}
		}(z)
	}
	wg.Wait()
	sort.Slice(out.Listings, func(i, j int) bool { return out.Listings[i].Zone < out.Listings[j].Zone })
	sort.Strings(out.Skipped)
	return out
}

// retestDown re-tests a disabled zone now when its last test is older
// than downRetry (and no test is running), and reports whether the zone
// is up again. Without it, a zone disabled while the resolver was down
// (at startup, or by a triggered test during an outage) stayed unused,
// listed clients passing unscored, until the next periodic self-test.
func (k *Check) retestDown(ctx context.Context, z *zoneState) bool {
	if time.Since(time.Unix(0, z.lastTest.Load())) < k.downRetry {
		return false
	}
	if !z.testing.CompareAndSwap(false, true) {
		return false
	}
	defer z.testing.Store(false)
	k.testZone(ctx, z)
	return z.up.Load()
}

// errRefused marks a refused-code answer.
var errRefused = errors.New("answer is a refused code (query refused, rate limited or open resolver)")

func (k *Check) queryZone(ctx context.Context, z *zoneState, ip netip.Addr) (*Listing, error) {
	addrs, err := k.r.LookupA(ctx, dnsx.ReverseName(ip, z.name))
	if dnsx.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		k.zoneError.WithLabelValues(z.name).Inc()
		if dnsx.IsTimeout(err) {
			k.trigger(z)
		}
		return nil, fmt.Errorf("%s: %w", z.name, err)
	}
	l, refused := z.match(addrs)
	if refused {
		k.zoneError.WithLabelValues(z.name).Inc()
		k.log.Warn("dnsbl zone answered a refused code; not counted, self-testing", "zone", z.name, "answer", fmt.Sprint(addrs))
		k.trigger(z)
		return nil, nil
	}
	if l != nil {
		k.listed.WithLabelValues(z.name).Inc()
	}
	return l, nil
}

// match turns answers into a listing; refused reports a refused code.
func (z *zone) match(addrs []netip.Addr) (l *Listing, refused bool) {
	var codes []netip.Addr
	for _, a := range addrs {
		for _, r := range z.refused {
			if r.contains(a) {
				return nil, true
			}
		}
		// Answers outside 127/8 are not list codes (a wildcarded or
		// expired zone); ignore them.
		if a.Is4() && a.As4()[0] == 127 {
			codes = append(codes, a)
		}
	}
	if len(codes) == 0 {
		return nil, false
	}
	l = &Listing{Zone: z.name, Allow: z.allow, Codes: codes}
	if len(z.codes) == 0 {
		l.Symbols = []verdict.Symbol{{Name: z.symbol, Score: z.weight, Detail: z.name + " " + fmt.Sprint(codes)}}
		l.Weight = z.weight
		return l, false
	}
	for _, r := range z.codes {
		for _, a := range codes {
			if r.contains(a) {
				l.Symbols = append(l.Symbols, verdict.Symbol{Name: r.symbol, Score: r.weight, Detail: z.name + " " + a.String()})
				l.Weight += r.weight
				break
			}
		}
	}
	if len(l.Symbols) == 0 {
		return nil, false
	}
	return l, false
}

// CheckConn reads the dnsbl future and scores the listings.
func (k *Check) CheckConn(ctx context.Context, c *pipeline.Conn) verdict.Result {
	v, err := k.Start(c).Get(ctx)
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("dnsbl: %w", err)}
	}
	lk := v.(*Lookup)
	var res verdict.Result
	var blocked []string
	for _, l := range lk.Listings {
		res.Symbols = append(res.Symbols, l.Symbols...)
		if l.Weight > 0 {
			blocked = append(blocked, l.Zone)
		}
	}
	if lk.Sum >= k.cfg.RejectThreshold && len(blocked) > 0 {
		res.Hard = &verdict.Verdict{Action: verdict.Reject,
			Reply: verdict.Reply{Code: 554, Enhanced: [3]int{5, 7, 1},
				Text: fmt.Sprintf("Service unavailable; client [%s] blocked using %s", c.IP.Unmap(), strings.Join(blocked, ", "))},
			Reason: fmt.Sprintf("dnsbl sum %s >= %s", verdict.FormatScore(lk.Sum), verdict.FormatScore(k.cfg.RejectThreshold))}
		return res
	}
	if len(lk.Errors) > 0 {
		// Some lists could not be asked and the others do not decide:
		// we do not know. Never "listed".
		res.Err = fmt.Errorf("dnsbl: %w", errors.Join(lk.Errors...))
	}
	return res
}

// ZoneUp reports whether the named zone is enabled.
func (k *Check) ZoneUp(name string) bool {
	for _, z := range k.zones {
		if z.name == normZone(name) {
			return z.up.Load()
		}
	}
	return false
}

// trigger starts a self-test of z unless one is running.
func (k *Check) trigger(z *zoneState) {
	if !z.testing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer z.testing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.Timeout)
		defer cancel()
		k.testZone(ctx, z)
	}()
}

// SelfTest tests every zone now and returns the zones that are down.
func (k *Check) SelfTest(ctx context.Context) []string {
	var wg sync.WaitGroup
	for _, z := range k.zones {
		wg.Add(1)
		go func(z *zoneState) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, k.cfg.Timeout)
			defer cancel()
			k.testZone(ctx, z)
		}(z)
	}
	wg.Wait()
	var down []string
	for _, z := range k.zones {
		if !z.up.Load() {
			down = append(down, z.name)
		}
	}
	return down
}

// Run self-tests the zones at start and every self_test_interval until ctx
// ends.
func (k *Check) Run(ctx context.Context) {
	t := time.NewTicker(k.cfg.SelfTestInterval)
	defer t.Stop()
	for {
		k.SelfTest(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (k *Check) testZone(ctx context.Context, z *zoneState) {
	z.lastTest.Store(time.Now().UnixNano())
	addrs, err := k.r.LookupA(ctx, dnsx.ReverseName(z.testIP, z.name))
	var reason string
	switch {
	case dnsx.IsNotFound(err):
		reason = "test entry " + z.testIP.String() + " not listed (NXDOMAIN)"
	case err != nil:
		reason = "test query failed: " + err.Error()
	default:
		l, refused := z.match(addrs)
		switch {
		case refused:
			reason = "query refused (rate limited or open resolver): " + fmt.Sprint(addrs)
		case l == nil:
			reason = "test entry answered without a list code: " + fmt.Sprint(addrs)
		}
	}
	if ctx.Err() != nil && err != nil && !dnsx.IsTimeout(err) {
		return // our own shutdown, not the zone's fault
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	was := z.up.Load()
	if reason == "" {
		if !was {
			k.log.Info("dnsbl zone re-enabled: self-test passed", "zone", z.name)
		}
		z.up.Store(true)
		z.reason = ""
		k.up.WithLabelValues(z.name).Set(1)
		return
	}
	if was || z.reason != reason {
		k.log.Error("ALERT dnsbl zone disabled: self-test failed", "zone", z.name, "reason", reason)
	}
	z.up.Store(false)
	z.reason = reason
	k.up.WithLabelValues(z.name).Set(0)
}
