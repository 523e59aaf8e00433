package message

import (
	"net/netip"
	"net/url"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// findURLs finds http(s) and www. links in plain text.
func findURLs(s string) []string {
	var out []string
	ls := strings.ToLower(s)
	i := 0
	for len(out) < 500 {
		j := indexAny(ls[i:], "http://", "https://", "www.")
		if j < 0 {
			break
		}
		start := i + j
		end := start
		for end < len(s) && urlChar(s[end]) {
			end++
		}
		u := strings.TrimRight(s[start:end], ".,;:!?)]}'\"")
		if len(u) > 8 {
			out = append(out, u)
		}
		if end == start {
			end++
		}
		i = end
	}
	return out
}

func indexAny(s string, subs ...string) int {
	best := -1
	for _, sub := range subs {
		if k := strings.Index(s, sub); k >= 0 && (best < 0 || k < best) {
			best = k
		}
	}
	return best
}

func urlChar(c byte) bool {
	return c > ' ' && c < 0x7f && c != '<' && c != '>' && c != '"' && c != '`' && c != '\\'
}

// hostOf extracts the lower-case host of a link, "" if it has none
// (mailto:, relative links, fragments).
func hostOf(raw string) string {
	r := strings.TrimSpace(raw)
	lr := strings.ToLower(r)
	switch {
	case strings.HasPrefix(lr, "http://"), strings.HasPrefix(lr, "https://"), strings.HasPrefix(lr, "ftp://"):
	case strings.HasPrefix(lr, "//"):
		r = "http:" + r
	case strings.HasPrefix(lr, "www."):
		r = "http://" + r
	default:
		return ""
	}
	u, err := url.Parse(r)
	if err != nil || u.Host == "" {
		// Salvage: take text between :// and the next / ? #.
		i := strings.Index(r, "://")
		if i < 0 {
			return ""
		}
		h := r[i+3:]
		if k := strings.IndexAny(h, "/?#"); k >= 0 {
			h = h[:k]
		}
		if k := strings.LastIndexByte(h, '@'); k >= 0 {
			h = h[k+1:]
		}
		if k := strings.IndexByte(h, ':'); k >= 0 {
			h = h[:k]
		}
		return strings.TrimSuffix(strings.ToLower(h), ".")
	}
	return strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
}

// RegisteredDomain returns the registrable domain of host (example.co.uk for
// a.b.example.co.uk), the host itself for IP literals, and "" when none
// can be determined.
func RegisteredDomain(host string) string {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return ""
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return host
	}
	d, err := publicsuffix.EffectiveTLDPlusOne(host)
	if err != nil {
		return ""
	}
	return d
}

// HostIP returns the address when host is an IP literal (including
// decimal-integer obfuscation such as http://3232235777/).
func HostIP(host string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return a, true
	}
	var n uint64
	if host == "" || len(host) > 10 {
		return netip.Addr{}, false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if c < '0' || c > '9' {
			return netip.Addr{}, false
		}
		n = n*10 + uint64(c-'0')
	}
	if n > 0xffffffff {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}
