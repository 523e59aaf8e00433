package p0f

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Label is a p0f label: "s:win:Windows:7 or 8".
type Label struct {
	Generic bool   // "g": a generic (catch-all) signature
	Class   string // win, unix, other, "!" for userland tools
	Name    string // Windows, Linux, ...
	Flavor  string // 7 or 8, 3.11 and newer, ...
}

func (l Label) String() string {
	t := "s"
	if l.Generic {
		t = "g"
	}
	return t + ":" + l.Class + ":" + l.Name + ":" + l.Flavor
}

// window size kinds
const (
	wAny = iota
	wNorm
	wMSS
	wMTU
	wMod
)

// Sig is one [tcp:request] signature.
type Sig struct {
	Label  *Label
	Line   int
	Raw    string
	ver    int // 0 = any
	ittl   int
	badTTL bool
	olen   int
	mss    int // -1 any
	wtype  int
	wval   int
	scale  int // -1 any
	layout string
	quirks uint32
	pclass int // -1 any, 0 none, 1 payload
}

// DB is a set of signatures in file order.
type DB struct {
	Sigs []*Sig
}

// Load reads a p0f.fp file.
func Load(path string) (*DB, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads p0f.fp syntax, keeping the [tcp:request] section. A
// malformed signature is an error naming its line.
func Parse(r io.Reader) (*DB, error) {
	db := &DB{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	section := ""
	var label *Label
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = strings.Trim(line, "[]")
			label = nil
			continue
		}
		if section != "tcp:request" {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("p0f.fp line %d: expected key = value", n)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch key {
		case "label":
			l, err := parseLabel(val)
			if err != nil {
				return nil, fmt.Errorf("p0f.fp line %d: %v", n, err)
			}
			label = l
		case "sig":
			if label == nil {
				return nil, fmt.Errorf("p0f.fp line %d: sig before label", n)
			}
			s, err := ParseSig(val)
			if err != nil {
				return nil, fmt.Errorf("p0f.fp line %d: %v", n, err)
			}
			s.Label, s.Line = label, n
			db.Sigs = append(db.Sigs, s)
		case "sys":
			// OS list for userland labels; not needed for matching.
		default:
			return nil, fmt.Errorf("p0f.fp line %d: unknown key %q", n, key)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return db, nil
}

func parseLabel(s string) (*Label, error) {
	p := strings.SplitN(s, ":", 4)
	if len(p) != 4 || (p[0] != "s" && p[0] != "g") || p[1] == "" || p[2] == "" {
		return nil, fmt.Errorf("bad label %q", s)
	}
	return &Label{Generic: p[0] == "g", Class: p[1], Name: p[2], Flavor: p[3]}, nil
}

// ParseSig parses "ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass".
func ParseSig(s string) (*Sig, error) {
	f := strings.Split(s, ":")
	if len(f) != 8 {
		return nil, fmt.Errorf("signature %q: want 8 fields, have %d", s, len(f))
	}
	sig := &Sig{Raw: s}
	switch f[0] {
	case "*":
	case "4":
		sig.ver = 4
	case "6":
		sig.ver = 6
	default:
		return nil, fmt.Errorf("bad ver %q", f[0])
	}
	ttl := f[1]
	if strings.HasSuffix(ttl, "-") {
		sig.badTTL = true
		ttl = strings.TrimSuffix(ttl, "-")
	} else if a, b, ok := strings.Cut(ttl, "+"); ok {
		x, err1 := strconv.Atoi(a)
		y, err2 := strconv.Atoi(b)
		if err1 != nil || err2 != nil || x < 0 || y < 0 {
			return nil, fmt.Errorf("bad ittl %q", f[1])
		}
		ttl = strconv.Itoa(x + y)
	}
	v, err := strconv.Atoi(ttl)
	if err != nil || v < 1 || v > 255 {
		return nil, fmt.Errorf("bad ittl %q", f[1])
	}
	sig.ittl = v
	if sig.olen, err = strconv.Atoi(f[2]); err != nil || sig.olen < 0 || sig.olen > 255 {
		return nil, fmt.Errorf("bad olen %q", f[2])
	}
	if sig.mss, err = wildInt(f[3], 65535); err != nil {
		return nil, fmt.Errorf("bad mss %q", f[3])
	}
	ws, sc, ok := strings.Cut(f[4], ",")
	if !ok {
		return nil, fmt.Errorf("bad wsize,scale %q", f[4])
	}
	switch {
	case ws == "*":
		sig.wtype = wAny
	case strings.HasPrefix(ws, "mss*"):
		sig.wtype = wMSS
		sig.wval, err = strconv.Atoi(ws[4:])
	case strings.HasPrefix(ws, "mtu*"):
		sig.wtype = wMTU
		sig.wval, err = strconv.Atoi(ws[4:])
	case strings.HasPrefix(ws, "%"):
		sig.wtype = wMod
		sig.wval, err = strconv.Atoi(ws[1:])
		if err == nil && sig.wval == 0 {
			err = fmt.Errorf("modulo zero")
		}
	default:
		sig.wtype = wNorm
		sig.wval, err = strconv.Atoi(ws)
	}
	if err != nil || sig.wval < 0 || sig.wval > 65535 {
		return nil, fmt.Errorf("bad wsize %q", ws)
	}
	if sig.scale, err = wildInt(sc, 255); err != nil {
		return nil, fmt.Errorf("bad scale %q", sc)
	}
	if f[5] == "" {
		return nil, fmt.Errorf("empty olayout")
	}
	for _, o := range strings.Split(f[5], ",") {
		switch {
		case o == "nop", o == "mss", o == "ws", o == "sok", o == "sack", o == "ts":
		case strings.HasPrefix(o, "eol+"), strings.HasPrefix(o, "?"):
			num := strings.TrimPrefix(strings.TrimPrefix(o, "eol+"), "?")
			if x, err := strconv.Atoi(num); err != nil || x < 0 || x > 255 {
				return nil, fmt.Errorf("bad option %q", o)
			}
		default:
			return nil, fmt.Errorf("bad option %q", o)
		}
	}
	sig.layout = f[5]
	if f[6] != "" {
		for _, q := range strings.Split(f[6], ",") {
			bit, ok := quirkNames[q]
			if !ok {
				return nil, fmt.Errorf("unknown quirk %q", q)
			}
			sig.quirks |= bit
		}
	}
	switch f[7] {
	case "*":
		sig.pclass = -1
	case "0":
		sig.pclass = 0
	case "+":
		sig.pclass = 1
	default:
		return nil, fmt.Errorf("bad pclass %q", f[7])
	}
	return sig, nil
}

func wildInt(s string, max int) (int, error) {
	if s == "*" {
		return -1, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 || v > max {
		return 0, fmt.Errorf("bad number %q", s)
	}
	return v, nil
}

// maxDist is p0f's MAX_DIST: the farthest TTL distance still matched.
const maxDist = 35

// Match is a fingerprint result.
type Match struct {
	Label    *Label
	Sig      *Sig
	Distance int  // hops, from the signature's initial TTL
	Fuzzy    bool // matched only by tolerating lost quirks or far TTL
}

// Match finds the best signature for s: an exact specific signature, else
// an exact generic one, else the first fuzzy one. nil when nothing fits.
func (db *DB) Match(s *SYN) *Match {
	if db == nil || s == nil {
		return nil
	}
	var generic, fuzzy *Match
	for _, sig := range db.Sigs {
		ok, fz, dist := sig.match(s)
		if !ok {
			continue
		}
		m := &Match{Label: sig.Label, Sig: sig, Distance: dist, Fuzzy: fz}
		switch {
		case fz:
			if fuzzy == nil {
				fuzzy = m
			}
		case sig.Label.Generic:
			if generic == nil {
				generic = m
			}
		default:
			return m
		}
	}
	if generic != nil {
		return generic
	}
	return fuzzy
}

func (sig *Sig) match(s *SYN) (ok, fuzzy bool, dist int) {
	if sig.ver != 0 && sig.ver != s.Version {
		return false, false, 0
	}
	if sig.olen != s.IPOptLen || sig.layout != s.Layout {
		return false, false, 0
	}
	if sig.pclass >= 0 && (sig.pclass == 1) != (s.PayloadSz > 0) {
		return false, false, 0
	}
	if sig.mss >= 0 && sig.mss != s.MSS {
		return false, false, 0
	}
	if sig.scale >= 0 && sig.scale != s.Scale {
		return false, false, 0
	}
	switch sig.wtype {
	case wNorm:
		if s.Window != sig.wval {
			return false, false, 0
		}
	case wMod:
		if s.Window%sig.wval != 0 {
			return false, false, 0
		}
	case wMSS:
		if s.MSS <= 0 || s.Window != s.MSS*sig.wval {
			return false, false, 0
		}
	case wMTU:
		hdr := 40
		if s.Version == 6 {
			hdr = 60
		}
		if s.MSS <= 0 || s.Window != (s.MSS+hdr)*sig.wval {
			return false, false, 0
		}
	}
	squirks := sig.quirks
	if s.Version == 6 {
		squirks &^= QDF | QNZID | QZeroID
	}
	if squirks != s.Quirks {
		deleted := squirks &^ s.Quirks
		added := s.Quirks &^ squirks
		// As p0f: 'df' or 'id+' disappearing, or 'id-' or 'ecn'
		// appearing (traffic normalizers), still matches, fuzzily.
		if deleted&^(QDF|QNZID) != 0 || added&^(QZeroID|QECN) != 0 {
			return false, false, 0
		}
		fuzzy = true
	}
	if s.TTL > sig.ittl {
		return false, false, 0
	}
	dist = sig.ittl - s.TTL
	if !sig.badTTL && dist > maxDist {
		fuzzy = true
	}
	return true, fuzzy, dist
}
