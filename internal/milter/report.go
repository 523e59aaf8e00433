package milter

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// SignatureHeader carries the HMAC of a bypass report body.
const SignatureHeader = "X-Moat-Signature"

// Limits of a bypass report.
const (
	MaxReportBytes  = 1 << 20
	MaxReportEvents = 1000
	// MaxReportSkew is how far a report's Sent time may be from the
	// receiver's clock.
	MaxReportSkew = 10 * time.Minute
)

// Event is one message that reached a backend without a valid pass mark.
type Event struct {
	ClientIP string    `json:"client_ip"`
	Time     time.Time `json:"time"`
	Reason   string    `json:"reason"` // missing, forged, recipient, altered, expired, malformed
	QueueID  string    `json:"queue_id,omitempty"`
}

// Report is one authenticated batch of bypass events for one domain,
// POSTed by the milter to Moat. The body is JSON; the SignatureHeader is
// "v1=" + hex(HMAC-SHA256(domain secret, body)).
type Report struct {
	Version int       `json:"v"`
	Domain  string    `json:"domain"`
	Sent    time.Time `json:"sent"`
	Nonce   string    `json:"nonce"`
	Events  []Event   `json:"events"`
}

// ParseReport decodes and validates a report body (not its signature).
func ParseReport(body []byte) (*Report, error) {
	if len(body) > MaxReportBytes {
		return nil, errors.New("report too large")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var r Report
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if dec.More() {
		return nil, errors.New("report: trailing data")
	}
	if r.Version != 1 {
		return nil, fmt.Errorf("report: unsupported version %d", r.Version)
	}
	r.Domain = strings.ToLower(strings.TrimSuffix(r.Domain, "."))
	if r.Domain == "" || len(r.Domain) > 253 || strings.ContainsAny(r.Domain, " \t\r\n/") {
		return nil, errors.New("report: bad domain")
	}
	if l := len(r.Nonce); l < 8 || l > 64 {
		return nil, errors.New("report: bad nonce")
	}
	if len(r.Events) == 0 || len(r.Events) > MaxReportEvents {
		return nil, fmt.Errorf("report: %d events (want 1-%d)", len(r.Events), MaxReportEvents)
	}
	for i, e := range r.Events {
		a, err := netip.ParseAddr(e.ClientIP)
		if err != nil {
			return nil, fmt.Errorf("report: event %d: bad client_ip", i)
		}
		r.Events[i].ClientIP = a.Unmap().String()
		if len(e.Reason) > 32 || len(e.QueueID) > 64 || e.Time.IsZero() {
			return nil, fmt.Errorf("report: event %d: bad fields", i)
		}
	}
	return &r, nil
}

// Sign returns the SignatureHeader value for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

func verifySig(secret, body []byte, header string) bool {
	got, ok := strings.CutPrefix(header, "v1=")
	if !ok {
		return false
	}
	sig, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hmac.Equal(m.Sum(nil), sig)
}

// ReportHandler receives the milters' bypass reports. secrets returns a
// domain's pass-mark secret (nil: not a Moat domain); sink gets every
// authenticated, fresh, not yet seen report (e.g. (*Stats).Record). Replies:
// 204 accepted (or duplicate), 400 malformed, 401 bad signature or stale,
// 403 unknown domain, 405 not POST, 413 too large.
func ReportHandler(secrets func(domain string) []byte, sink func(Report)) http.Handler {
	seen := &nonceCache{m: map[string]time.Time{}}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(io.LimitReader(req.Body, MaxReportBytes+1))
		if err != nil {
			http.Error(w, "read error", http.StatusBadRequest)
			return
		}
		if len(body) > MaxReportBytes {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		r, err := ParseReport(body)
		if err != nil {
			http.Error(w, "malformed report", http.StatusBadRequest)
			return
		}
		secret := secrets(r.Domain)
		if secret == nil {
			http.Error(w, "unknown domain", http.StatusForbidden)
			return
		}
		if !verifySig(secret, body, req.Header.Get(SignatureHeader)) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		now := time.Now()
		if d := now.Sub(r.Sent); d > MaxReportSkew || d < -MaxReportSkew {
			http.Error(w, "stale report", http.StatusUnauthorized)
			return
		}
		if seen.add(r.Domain+"/"+r.Nonce, now) {
			sink(*r)
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// nonceCache remembers recent nonces so a captured report cannot be
// replayed within the skew window.
type nonceCache struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func (c *nonceCache) add(k string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 100000 || len(c.m)%1024 == 1023 {
		for n, t := range c.m {
			if now.Sub(t) > 2*MaxReportSkew {
				delete(c.m, n)
			}
		}
	}
	if _, dup := c.m[k]; dup {
		return false
	}
	if len(c.m) > 200000 {
		return true // under a flood: accept rather than grow without bound
	}
	c.m[k] = now
	return true
}
