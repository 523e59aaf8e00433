// Package p0f does passive OS fingerprinting of a TCP SYN with p0f v3
// signatures: it parses the [tcp:request] section of p0f.fp and matches
// a raw SYN (IP header onwards, as Linux getsockopt(TCP_SAVED_SYN) returns
// it) the way p0f does: exact signatures first, then generic ones, then a
// fuzzy match tolerating lost DF/ID quirks and a TTL farther away.
package p0f

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Quirk bits (p0f names in quirkNames).
const (
	QDF         uint32 = 1 << iota // df: don't fragment set
	QNZID                          // id+: DF set but IP ID non-zero
	QZeroID                        // id-: DF not set but IP ID zero
	QECN                           // ecn
	QNZMBZ                         // 0+: must-be-zero IP flag set
	QFlow                          // flow: IPv6 flow label non-zero
	QZeroSeq                       // seq-
	QNZAck                         // ack+: ack number without ACK flag
	QZeroAck                       // ack-: ACK flag with zero ack number
	QNZURG                         // uptr+: urgent pointer without URG
	QURG                           // urgf+
	QPush                          // pushf+
	QOptZeroTS1                    // ts1-: own timestamp zero
	QOptNZTS2                      // ts2+: peer timestamp non-zero on SYN
	QOptEOLNZ                      // opt+: non-zero data after EOL
	QOptEXWS                       // exws: window scale > 14
	QOptBad                        // bad: malformed options
)

var quirkNames = map[string]uint32{
	"df": QDF, "id+": QNZID, "id-": QZeroID, "ecn": QECN, "0+": QNZMBZ, "flow": QFlow,
	"seq-": QZeroSeq, "ack+": QNZAck, "ack-": QZeroAck, "uptr+": QNZURG, "urgf+": QURG,
	"pushf+": QPush, "ts1-": QOptZeroTS1, "ts2+": QOptNZTS2, "opt+": QOptEOLNZ,
	"exws": QOptEXWS, "bad": QOptBad,
}

// SYN is a parsed TCP SYN as p0f sees it.
type SYN struct {
	Version   int    // 4 or 6
	TTL       int    // observed TTL / hop limit
	IPOptLen  int    // IPv4 options length
	MSS       int    // -1 when absent
	Window    int    // TCP window
	Scale     int    // window scale, -1 when absent
	Layout    string // option layout, p0f syntax: "mss,sok,ts,nop,ws"
	Quirks    uint32
	PayloadSz int
}

// QuirkString renders the quirks in p0f syntax.
func (s *SYN) QuirkString() string { return quirkString(s.Quirks) }

func quirkString(q uint32) string {
	var out []string
	for _, n := range []string{"df", "id+", "id-", "ecn", "0+", "flow", "seq-", "ack+", "ack-", "uptr+", "urgf+", "pushf+", "ts1-", "ts2+", "opt+", "exws", "bad"} {
		if q&quirkNames[n] != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// String renders the SYN as a p0f signature (with the observed TTL).
func (s *SYN) String() string {
	mss := "*"
	if s.MSS >= 0 {
		mss = fmt.Sprint(s.MSS)
	}
	scale := "*"
	if s.Scale >= 0 {
		scale = fmt.Sprint(s.Scale)
	}
	pc := "0"
	if s.PayloadSz > 0 {
		pc = "+"
	}
	return fmt.Sprintf("%d:%d:%d:%s:%d,%s:%s:%s:%s", s.Version, s.TTL, s.IPOptLen, mss, s.Window, scale, s.Layout, s.QuirkString(), pc)
}

var errShort = errors.New("p0f: packet too short")

// ParseSYN parses raw IP+TCP headers (and any payload).
func ParseSYN(b []byte) (*SYN, error) {
	if len(b) < 1 {
		return nil, errShort
	}
	s := &SYN{MSS: -1, Scale: -1}
	var tcp []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return nil, errShort
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return nil, errors.New("p0f: bad IPv4 header length")
		}
		if b[9] != 6 {
			return nil, errors.New("p0f: not TCP")
		}
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if total < ihl || total > len(b) {
			total = len(b)
		}
		s.Version = 4
		s.TTL = int(b[8])
		s.IPOptLen = ihl - 20
		if b[1]&0x03 != 0 {
			s.Quirks |= QECN
		}
		flags := binary.BigEndian.Uint16(b[6:8])
		id := binary.BigEndian.Uint16(b[4:6])
		if flags&0x8000 != 0 {
			s.Quirks |= QNZMBZ
		}
		if flags&0x4000 != 0 {
			s.Quirks |= QDF
			if id != 0 {
				s.Quirks |= QNZID
			}
		} else if id == 0 {
			s.Quirks |= QZeroID
		}
		tcp = b[ihl:total]
	case 6:
		if len(b) < 40 {
			return nil, errShort
		}
		if b[6] != 6 {
			return nil, errors.New("p0f: not TCP (or IPv6 extension headers)")
		}
		s.Version = 6
		s.TTL = int(b[7])
		if (b[1]&0x0f) != 0 || b[2] != 0 || b[3] != 0 {
			s.Quirks |= QFlow
		}
		if (binary.BigEndian.Uint16(b[0:2])>>4)&0x03 != 0 {
			s.Quirks |= QECN
		}
		plen := int(binary.BigEndian.Uint16(b[4:6]))
		end := 40 + plen
		if end > len(b) || plen == 0 {
			end = len(b)
		}
		tcp = b[40:end]
	default:
		return nil, errors.New("p0f: not IPv4 or IPv6")
	}
	if len(tcp) < 20 {
		return nil, errShort
	}
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || doff > len(tcp) {
		return nil, errors.New("p0f: bad TCP data offset")
	}
	fl := tcp[13]
	const (
		fFIN, fSYN, fRST, fPSH, fACK, fURG, fECE, fCWR = 1, 2, 4, 8, 16, 32, 64, 128
	)
	if fl&fSYN == 0 || fl&(fRST|fFIN) != 0 {
		return nil, errors.New("p0f: not a SYN")
	}
	if fl&(fECE|fCWR) != 0 {
		s.Quirks |= QECN
	}
	if binary.BigEndian.Uint32(tcp[4:8]) == 0 {
		s.Quirks |= QZeroSeq
	}
	ack := binary.BigEndian.Uint32(tcp[8:12])
	if fl&fACK != 0 {
		if ack == 0 {
			s.Quirks |= QZeroAck
		}
	} else if ack != 0 {
		s.Quirks |= QNZAck
	}
	urg := binary.BigEndian.Uint16(tcp[18:20])
	if fl&fURG != 0 {
		s.Quirks |= QURG
	} else if urg != 0 {
		s.Quirks |= QNZURG
	}
	if fl&fPSH != 0 {
		s.Quirks |= QPush
	}
	s.Window = int(binary.BigEndian.Uint16(tcp[14:16]))
	s.PayloadSz = len(tcp) - doff
	s.parseOptions(tcp[20:doff])
	return s, nil
}

func (s *SYN) parseOptions(o []byte) {
	var lay []string
	for i := 0; i < len(o); {
		kind := o[i]
		switch kind {
		case 0: // EOL: the rest is padding
			pad := o[i+1:]
			lay = append(lay, fmt.Sprintf("eol+%d", len(pad)))
			for _, c := range pad {
				if c != 0 {
					s.Quirks |= QOptEOLNZ
					break
				}
			}
			s.Layout = strings.Join(lay, ",")
			return
		case 1:
			lay = append(lay, "nop")
			i++
			continue
		}
		if i+1 >= len(o) {
			s.Quirks |= QOptBad
			lay = append(lay, fmt.Sprintf("?%d", kind))
			break
		}
		l := int(o[i+1])
		if l < 2 || i+l > len(o) {
			s.Quirks |= QOptBad
			lay = append(lay, optName(kind))
			break
		}
		d := o[i+2 : i+l]
		switch kind {
		case 2:
			if l == 4 {
				s.MSS = int(binary.BigEndian.Uint16(d))
			} else {
				s.Quirks |= QOptBad
			}
		case 3:
			if l == 3 {
				s.Scale = int(d[0])
				if s.Scale > 14 {
					s.Quirks |= QOptEXWS
				}
			} else {
				s.Quirks |= QOptBad
			}
		case 4:
			if l != 2 {
				s.Quirks |= QOptBad
			}
		case 8:
			if l == 10 {
				if binary.BigEndian.Uint32(d[0:4]) == 0 {
					s.Quirks |= QOptZeroTS1
				}
				if binary.BigEndian.Uint32(d[4:8]) != 0 {
					s.Quirks |= QOptNZTS2
				}
			} else {
				s.Quirks |= QOptBad
			}
		}
		lay = append(lay, optName(kind))
		i += l
	}
	s.Layout = strings.Join(lay, ",")
}

func optName(kind byte) string {
	switch kind {
	case 2:
		return "mss"
	case 3:
		return "ws"
	case 4:
		return "sok"
	case 5:
		return "sack"
	case 8:
		return "ts"
	}
	return fmt.Sprintf("?%d", kind)
}
