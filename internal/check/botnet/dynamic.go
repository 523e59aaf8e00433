package botnet

import (
	"fmt"
	"net/netip"
	"strings"
)

// dynamicTokens are words ISPs put in the names of dynamic, residential
// or customer-premises addresses.
var dynamicTokens = map[string]bool{
	"dsl": true, "adsl": true, "vdsl": true, "xdsl": true, "sdsl": true,
	"dyn": true, "dynamic": true, "dynip": true, "dhcp": true, "pool": true,
	"ppp": true, "pppoe": true, "cable": true, "catv": true, "cust": true,
	"customer": true, "broadband": true, "bb": true, "dial": true, "dialup": true,
	"dialin": true, "res": true, "resid": true, "residential": true, "home": true,
	"user": true, "users": true, "client": true, "clients": true, "fios": true, "ftth": true,
	"cpe": true, "subscriber": true, "nat": true, "wireless": true, "mobile": true,
}

// serverTokens mark names of real mail servers: their presence (or
// "static") overrides the dynamic tokens.
var serverTokens = map[string]bool{
	"mail": true, "mx": true, "smtp": true, "relay": true, "mta": true,
	"out": true, "outbound": true, "mailout": true, "static": true, "srv": true, "server": true,
}

// hostLabels returns the labels of name left of its registered domain
// (approximated: the last two labels, three under a short second level
// in a country TLD such as co.uk).
func hostLabels(name string) []string {
	labels := strings.Split(strings.ToLower(strings.TrimSuffix(name, ".")), ".")
	keep := len(labels) - 2
	if len(labels) >= 3 && len(labels[len(labels)-1]) == 2 && len(labels[len(labels)-2]) <= 3 {
		keep = len(labels) - 3
	}
	if keep < 0 {
		keep = 0
	}
	return labels[:keep]
}

// tokens splits labels on punctuation and letter/digit boundaries.
func tokens(labels []string) []string {
	var out []string
	for _, l := range labels {
		start := -1
		kind := 0 // 1 letter, 2 digit
		for i := 0; i <= len(l); i++ {
			k := 0
			if i < len(l) {
				c := l[i]
				switch {
				case c >= 'a' && c <= 'z':
					k = 1
				case c >= '0' && c <= '9':
					k = 2
				}
			}
			if k != kind {
				if start >= 0 && kind != 0 {
					out = append(out, l[start:i])
				}
				start, kind = i, k
			}
		}
	}
	return out
}

// embedsIP reports whether name contains the address in a common form:
// dotted or dashed (either octet order, optionally zero-padded) or 8 hex
// digits; for IPv6, the last 64 bits as hex groups.
func embedsIP(name string, ip netip.Addr) (bool, string) {
	n := strings.ToLower(name)
	ip = ip.Unmap()
	if ip.Is4() {
		a := ip.As4()
		fwd := []string{fmt.Sprint(a[0]), fmt.Sprint(a[1]), fmt.Sprint(a[2]), fmt.Sprint(a[3])}
		pad := []string{fmt.Sprintf("%03d", a[0]), fmt.Sprintf("%03d", a[1]), fmt.Sprintf("%03d", a[2]), fmt.Sprintf("%03d", a[3])}
		rev := func(s []string) []string { return []string{s[3], s[2], s[1], s[0]} }
		forms := []struct {
			parts  []string
			padded bool
		}{{fwd, false}, {rev(fwd), false}, {pad, true}, {rev(pad), true}}
		for _, f := range forms {
			for _, sep := range []string{"-", ".", "_", ""} {
				if sep == "" && !f.padded {
					continue // unpadded run-together digits are ambiguous
				}
				if containsToken(n, strings.Join(f.parts, sep)) {
					return true, "embeds the address"
				}
			}
		}
		hex := fmt.Sprintf("%02x%02x%02x%02x", a[0], a[1], a[2], a[3])
		if containsToken(n, hex) {
			return true, "embeds the address in hex"
		}
		return false, ""
	}
	a := ip.As16()
	for _, form := range []string{
		fmt.Sprintf("%x-%x-%x-%x", uint16(a[8])<<8|uint16(a[9]), uint16(a[10])<<8|uint16(a[11]), uint16(a[12])<<8|uint16(a[13]), uint16(a[14])<<8|uint16(a[15])),
		fmt.Sprintf("%02x%02x%02x%02x%02x%02x%02x%02x", a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]),
	} {
		if containsToken(n, form) {
			return true, "embeds the address"
		}
	}
	return false, ""
}

// containsToken reports whether sub occurs in s not glued to other
// alphanumerics on its left or right digit side ("1-2-3-4" must not match
// "11-2-3-45").
func containsToken(s, sub string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], sub)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(sub)
		leftOK := j == 0 || !isDigit(s[j-1])
		rightOK := end == len(s) || !isDigit(s[end])
		if leftOK && rightOK {
			return true
		}
		i = j + 1
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// Dynamic reports whether the PTR name looks like a dynamic or
// residential address, and why.
func Dynamic(name string, ip netip.Addr) (bool, string) {
	host := hostLabels(name)
	if len(host) == 0 {
		return false, ""
	}
	toks := tokens(host)
	// The first label decides whether this is a named server
	// ("mail.example.com", "mx1-out.example.net").
	for _, t := range tokens(host[:1]) {
		if serverTokens[t] {
			return false, ""
		}
	}
	for _, t := range toks {
		if t == "static" {
			return false, ""
		}
	}
	if ok, why := embedsIP(strings.Join(host, "."), ip); ok {
		return true, why
	}
	for _, t := range toks {
		if dynamicTokens[t] {
			return true, "contains " + t
		}
	}
	return false, ""
}
