package queue

import (
	"math/rand/v2"
	"sync"
	"time"
)

// idAlphabet is Crockford's base32: ASCII-ordered, so IDs sort by time, and
// without I, L, O, U, so they are easy to read aloud from an SMTP reply.
const idAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// IDLen is the length of a queue ID.
const IDLen = 16

var idState struct {
	sync.Mutex
	ms  uint64
	seq uint64
}

// newID returns a 16-character queue ID: 9 characters of milliseconds since
// the epoch (45 bits, good until year 3084) and 7 characters (35 bits) that
// start random and count up within one millisecond, so IDs made by one
// process are unique and strictly increasing.
func newID(now time.Time) string {
	ms := uint64(now.UnixMilli())
	idState.Lock()
	if ms <= idState.ms {
		ms = idState.ms
		idState.seq++
		if idState.seq >= 1<<35 {
			ms++
			idState.seq = rand.Uint64N(1 << 34)
		}
	} else {
		idState.seq = rand.Uint64N(1 << 34) // leave room to count up
	}
	idState.ms = ms
	seq := idState.seq
	idState.Unlock()

	var b [IDLen]byte
	for i := 8; i >= 0; i-- {
		b[i] = idAlphabet[ms&31]
		ms >>= 5
	}
	for i := IDLen - 1; i >= 9; i-- {
		b[i] = idAlphabet[seq&31]
		seq >>= 5
	}
	return string(b[:])
}

// ValidID reports whether s has the form of a queue ID. Only valid IDs are
// ever turned into file names.
func ValidID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' && c != 'I' && c != 'L' && c != 'O' && c != 'U') {
			return false
		}
	}
	return true
}
