package rules

// acMatcher is an Aho-Corasick automaton over lower-cased ASCII bytes
// (other bytes are matched as themselves). One pass over a text reports
// which patterns occur in it.
type acMatcher struct {
	next  []map[byte]int32 // goto function (trie), used while building
	fail  []int32
	delta [][256]int32 // full DFA transition table, built from next and fail
	out   [][]int32    // pattern indexes ending at each state (with fail-closure)
	npats int
}

func lowerByte(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 32
	}
	return c
}

func newAC(pats []string) *acMatcher {
	m := &acMatcher{next: []map[byte]int32{{}}, fail: []int32{0}, out: [][]int32{nil}, npats: len(pats)}
	for i, p := range pats {
		s := int32(0)
		for j := 0; j < len(p); j++ {
			c := lowerByte(p[j])
			n, ok := m.next[s][c]
			if !ok {
				n = int32(len(m.next))
				m.next = append(m.next, map[byte]int32{})
				m.fail = append(m.fail, 0)
				m.out = append(m.out, nil)
				m.next[s][c] = n
			}
			s = n
		}
		m.out[s] = append(m.out[s], int32(i))
	}
	// BFS for failure links; the DFA row of a state is completed from its
	// failure state's row, which BFS order has already built.
	m.delta = make([][256]int32, len(m.next))
	for c, n := range m.next[0] {
		m.delta[0][c] = n
	}
	order := make([]int32, 0, len(m.next))
	queue := make([]int32, 0, len(m.next))
	for _, n := range m.next[0] {
		queue = append(queue, n)
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		order = append(order, s)
		for c, n := range m.next[s] {
			queue = append(queue, n)
			f := m.fail[s]
			for {
				if t, ok := m.next[f][c]; ok && t != n {
					m.fail[n] = t
					break
				}
				if f == 0 {
					m.fail[n] = 0
					break
				}
				f = m.fail[f]
			}
			m.out[n] = append(m.out[n], m.out[m.fail[n]]...)
		}
	}
	for _, s := range order {
		m.delta[s] = m.delta[m.fail[s]]
		for c, n := range m.next[s] {
			m.delta[s][c] = n
		}
	}
	m.next = nil
	return m
}

// find returns found[i] = pattern i occurs in text (case-insensitively).
func (m *acMatcher) find(text string) []bool {
	found := make([]bool, m.npats)
	s := int32(0)
	for i := 0; i < len(text); i++ {
		s = m.delta[s][lowerByte(text[i])]
		for _, p := range m.out[s] {
			found[p] = true
		}
	}
	return found
}
