package classify

import (
	"cmp"
	"context"
	"iter"
	"slices"
	"sync"
)

// Row is what the store keeps for one feature key in one scope: how many
// ham and spam messages carried it (count models) and its weight
// (discriminative models).
type Row struct {
	Ham, Spam int64
	W         float64
	G         float64 // sum of squared gradients (adaptive learning rates)
}

// Delta is a change to one key's row.
type Delta struct {
	Key       uint64
	Ham, Spam int64
	W, G      float64
}

// Totals are per-scope counters: messages learned and the model bias.
type Totals struct {
	Ham, Spam int64
	Bias      float64
}

// Label is a lesson's class.
type Label int8

const (
	Unknown Label = 0
	Ham     Label = 1
	Spam    Label = 2
)

func (l Label) String() string {
	switch l {
	case Ham:
		return "ham"
	case Spam:
		return "spam"
	}
	return "unknown"
}

// Lesson records that the message with fingerprint FP was learned as
// Label in a scope (Label Unknown removes the record).
type Lesson struct {
	FP    [32]byte
	Label Label
}

// Batch is one atomic model update.
type Batch struct {
	Deltas []Delta
	Totals Totals  // added to the scope's totals
	Lesson *Lesson // optional
}

// TokenStore holds models. Scopes are independent models, e.g.
// "lr:global" or "lr:user:alice@example.com". Implementations must be safe
// for concurrent use; Update must be atomic.
type TokenStore interface {
	// Get returns the rows of keys, aligned with keys (zero rows for
	// unknown keys).
	Get(ctx context.Context, scope string, keys []uint64) ([]Row, error)
	// Update applies a batch atomically. It may reorder b.Deltas and
	// does not keep them after it returns (the caller reuses them).
	Update(ctx context.Context, scope string, b Batch) error
	// Totals returns the scope's totals.
	Totals(ctx context.Context, scope string) (Totals, error)
	// Lesson returns the label the fingerprint was learned with, Unknown if never.
	Lesson(ctx context.Context, scope string, fp [32]byte) (Label, error)
	// Size returns the number of stored keys in the scope.
	Size(ctx context.Context, scope string) (int64, error)
}

// MemStore is an in-memory TokenStore (moat eval, tests).
type MemStore struct {
	mu     sync.RWMutex
	scopes map[string]*memScope
}

type memScope struct {
	rows    map[uint64]Row
	totals  Totals
	lessons map[[32]byte]Label
}

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore { return &MemStore{scopes: map[string]*memScope{}} }

func (s *MemStore) scope(name string, create bool) *memScope {
	sc := s.scopes[name]
	if sc == nil && create {
		sc = &memScope{rows: make(map[uint64]Row, 1<<16), lessons: map[[32]byte]Label{}}
		s.scopes[name] = sc
	}
	return sc
}

// Get implements TokenStore.
func (s *MemStore) Get(_ context.Context, scope string, keys []uint64) ([]Row, error) {
	out := make([]Row, len(keys))
	s.mu.RLock()
	defer s.mu.RUnlock()
	sc := s.scope(scope, false)
	if sc == nil {
		return out, nil
	}
	for i, k := range keys {
		out[i] = sc.rows[k]
	}
	return out, nil
}

// Update implements TokenStore.
func (s *MemStore) Update(_ context.Context, scope string, b Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := s.scope(scope, true)
	for _, d := range b.Deltas {
		r := sc.rows[d.Key]
		r.Ham += d.Ham
		r.Spam += d.Spam
		r.W += d.W
		r.G += d.G
		if r.Ham <= 0 && r.Spam <= 0 && r.W == 0 && r.G == 0 {
			delete(sc.rows, d.Key)
			continue
		}
		sc.rows[d.Key] = r
	}
	sc.totals.Ham += b.Totals.Ham
	sc.totals.Spam += b.Totals.Spam
	sc.totals.Bias += b.Totals.Bias
	if b.Lesson != nil {
		if b.Lesson.Label == Unknown {
			delete(sc.lessons, b.Lesson.FP)
		} else {
			sc.lessons[b.Lesson.FP] = b.Lesson.Label
		}
	}
	return nil
}

// Totals implements TokenStore.
func (s *MemStore) Totals(_ context.Context, scope string) (Totals, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if sc := s.scope(scope, false); sc != nil {
		return sc.totals, nil
	}
	return Totals{}, nil
}

// Lesson implements TokenStore.
func (s *MemStore) Lesson(_ context.Context, scope string, fp [32]byte) (Label, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if sc := s.scope(scope, false); sc != nil {
		return sc.lessons[fp], nil
	}
	return Unknown, nil
}

// Size implements TokenStore.
func (s *MemStore) Size(_ context.Context, scope string) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if sc := s.scope(scope, false); sc != nil {
		return int64(len(sc.rows)), nil
	}
	return 0, nil
}

// BulkStore is an optional TokenStore extension for learning many lessons
// at once (Classifier.NewLearner): the lessons are learned against an
// in-memory overlay and their net change is written in one transaction.
type BulkStore interface {
	TokenStore
	// Version returns the scope's model version, a counter that every
	// write of the scope increases (0 for a scope never written).
	Version(ctx context.Context, scope string) (int64, error)
	// Apply writes ws in one transaction (it may reorder ws). For each
	// w, if the scope's version is still w.Version, the rows, totals and
	// lessons are set to w's values (so the stored model is bit for bit
	// what learning the lessons one by one would have stored); otherwise
	// another writer came in between and w's deltas are added as Update
	// adds them.
	Apply(ctx context.Context, ws []ScopeWrite) error
}

// ScopeWrite is the net change of one scope after a run of lessons.
type ScopeWrite struct {
	Scope   string
	Version int64 // the scope's version before the first lesson read it
	// Rows are the rows written, by key (as stored: signed). Apply reads
	// them once, as it writes them: a run of lessons writes hundreds of
	// thousands, which the overlay sorts while Apply writes the scopes
	// before.
	Rows    iter.Seq[KeyWrite]
	Totals  Totals // the totals after the lessons
	DTotals Totals // the change of the totals
	Lessons []Lesson
}

// KeyWrite is one key's row after a run of lessons and its net change.
type KeyWrite struct {
	Key    uint64
	Row    Row   // the row after the lessons
	Delta  Delta // Row minus the row before (added when the version moved)
	Exists bool  // false: the row was removed (all zero after an unlearn)
	Shrunk bool  // a lesson subtracted counts from it (delta mode removes it if empty)
}

// overlay is a TokenStore over a BulkStore that keeps every write in
// memory, in the order the lessons came, until flush: reads see the
// pending writes, and rows are computed with exactly the arithmetic the
// database would have done lesson by lesson.
//
// It is the inner loop of moat learn (every lesson reads and writes a few
// thousand keys, several times), so its rows live in an open-addressing
// table of pointer-free entries (ovTable) rather than a Go map of
// pointers, which the garbage collector had to scan.
type overlay struct {
	base   BulkStore
	scopes map[string]*ovScope
	order  []string
	sizes  map[string]int // rows each scope held at the last flush (table size hint)
}

// ovEnt is one key's row in an overlay scope.
type ovEnt struct {
	key   uint64
	row   Row // the row as the lessons so far left it
	delta Row // the change since it was read
	stamp uint32
	flags uint8
}

const (
	ovTouched uint8 = 1 << iota // a lesson wrote it
	ovExists                    // it is not all zero after an unlearn
	ovShrunk                    // a lesson subtracted counts from it
)

// ovSlot is an index slot: pos is 1 + the entry's position (0: empty).
type ovSlot struct {
	key uint64
	pos uint32
}

// ovTable maps keys to entries, which are kept in the order they were
// added, in chunks of ovChunk (growing never copies them; a position
// stays valid until the table is dropped).
type ovTable struct {
	slots  []ovSlot
	shift  uint
	n      int
	chunks [][]ovEnt
}

const ovChunkBits = 13
const ovChunk = 1 << ovChunkBits

func (t *ovTable) init(hint int) {
	n := 1 << 12
	for n*3/4 < hint {
		n <<= 1
	}
	t.slots = make([]ovSlot, n)
	t.shift = uint(64 - bitsLen(n-1))
}

func bitsLen(x int) int {
	n := 0
	for ; x > 0; x >>= 1 {
		n++
	}
	return n
}

func (t *ovTable) home(k uint64) uint64 { return (k * 0x9E3779B97F4A7C15) >> t.shift }

// at returns the entry at position p.
func (t *ovTable) at(p int32) *ovEnt { return &t.chunks[p>>ovChunkBits][p&(ovChunk-1)] }

// find returns k's entry position, -1 if it has none.
func (t *ovTable) find(k uint64) int32 {
	mask := uint64(len(t.slots) - 1)
	for i := t.home(k); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.pos == 0 {
			return -1
		}
		if s.key == k {
			return int32(s.pos - 1)
		}
	}
}

// insert adds an entry for k (which has none) holding r.
func (t *ovTable) insert(k uint64, r Row) int32 {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
	}
	p := t.n
	if p&(ovChunk-1) == 0 {
		t.chunks = append(t.chunks, make([]ovEnt, ovChunk))
	}
	t.chunks[p>>ovChunkBits][p&(ovChunk-1)] = ovEnt{key: k, row: r}
	t.n++
	t.place(k, uint32(p+1))
	return int32(p)
}

func (t *ovTable) place(k uint64, pos uint32) {
	mask := uint64(len(t.slots) - 1)
	i := t.home(k)
	for t.slots[i].pos != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = ovSlot{key: k, pos: pos}
}

func (t *ovTable) grow() {
	t.slots = make([]ovSlot, 2*len(t.slots))
	t.shift--
	for p := range t.n {
		t.place(t.at(int32(p)).key, uint32(p+1))
	}
}

// each calls fn for every entry, in the order they were added.
func (t *ovTable) each(fn func(p int32, e *ovEnt)) {
	for p := range t.n {
		fn(int32(p), t.at(int32(p)))
	}
}

type ovLesson struct {
	label   Label
	written bool // a lesson of the batch set it (flush writes it)
}

type ovScope struct {
	version int64
	// noRows: every stored row of the scope is in the table (the store
	// held none when the scope was first read, or all were loaded at
	// once), so a key the table does not hold is absent and is not asked
	// for. noLessons: likewise for lessons (the store held none).
	noRows, noLessons bool
	// asked counts the keys read from the store; size is the scope's
	// stored size, once asked passed fullLoadMin (-1 before).
	asked   int
	size    int64
	touched int // entries a lesson wrote
	t       ovTable
	totals  Totals
	dtot    Totals
	hasTot  bool
	lessons map[[32]byte]ovLesson
	lorder  [][32]byte
	stamp   uint32 // Update counter (duplicate keys in a batch)
	// memoKeys and memoPos: the keys of the last Get and their entry
	// positions (-1: none). A lesson reads and writes the same keys in
	// the same order, so most lookups are a comparison with the memo.
	memoKeys []uint64
	memoPos  []int32
	memoN    int      // entries in the table when the memo was taken
	pos      []int32  // scratch
	keys     []uint64 // scratch
	out      []Row    // Get's rows, valid until the next Get of the scope
}

func newOverlay(base BulkStore) *overlay {
	return &overlay{base: base, scopes: map[string]*ovScope{}, sizes: map[string]int{}}
}

// scopeProber is an optional BulkStore extension: whether a scope has
// any stored row and any lesson (SQLStore: one indexed query), and all
// the rows of a scope in one pass.
type scopeProber interface {
	probeScope(ctx context.Context, scope string) (hasRows, hasLessons bool, err error)
	scanScope(ctx context.Context, scope string, fn func(k uint64, r Row)) error
}

// Reading a scope's rows key by key costs far more per row than reading
// all of them in one pass (SQLite: a few thousand B-tree lookups per
// lesson, each page read again). So once a batch has read fullLoadMin
// keys of a scope, and at least 1/fullLoadShare of its stored rows, the
// rest of the scope is read in one pass (SQLite, measured: a row scanned
// costs about a sixth of a key looked up, and the lessons to come look
// up more). The table then holds at most fullLoadShare times the rows
// the batch had read. (Variables: tests lower them.)
var (
	fullLoadMin   = 1 << 14
	fullLoadShare = 16
)

func (o *overlay) scope(ctx context.Context, name string) (*ovScope, error) {
	if sc := o.scopes[name]; sc != nil {
		return sc, nil
	}
	v, err := o.base.Version(ctx, name) // before anything of the scope is read
	if err != nil {
		return nil, err
	}
	sc := &ovScope{version: v, lessons: map[[32]byte]ovLesson{}, size: -1}
	if p, ok := o.base.(scopeProber); ok {
		// After the version: a writer coming in between moves the
		// version, and Apply then adds the changes instead of setting
		// the rows read as absent.
		rows, lessons, err := p.probeScope(ctx, name)
		if err != nil {
			return nil, err
		}
		sc.noRows, sc.noLessons = !rows, !lessons
	}
	sc.t.init(o.sizes[name])
	o.scopes[name] = sc
	o.order = append(o.order, name)
	return sc, nil
}

// positions sets sc.pos to the entry positions of keys (-1: none),
// comparing with the memo of the last Get first.
func (sc *ovScope) positions(keys []uint64) []int32 {
	pos := sc.pos[:0]
	if cap(pos) < len(keys) {
		pos = make([]int32, 0, len(keys)+len(keys)/4)
	}
	mk, mp := sc.memoKeys, sc.memoPos
	same := sc.memoN == sc.t.n // nothing added since: absent keys still are
	// The keys of a lesson's write are those of its read less the
	// repeated ones (mergeDeltas), in the same order: the memo is
	// followed a few keys ahead, so one merged key does not lose it.
	j := 0
keys:
	for _, k := range keys {
		for m := j; m < len(mk) && m < j+4; m++ {
			if mk[m] == k {
				if mp[m] < 0 && !same {
					break
				}
				pos = append(pos, mp[m])
				j = m + 1
				continue keys
			}
		}
		pos = append(pos, sc.t.find(k))
	}
	sc.pos = pos
	return pos
}

// load gives every key of keys whose position is -1 an entry, with its
// stored row (zero in a scope that had no rows), and updates pos.
func (o *overlay) load(ctx context.Context, scope string, sc *ovScope, keys []uint64, pos []int32) error {
	var miss []uint64
	for i, p := range pos {
		if p < 0 {
			miss = append(miss, keys[i])
		}
	}
	if len(miss) == 0 {
		return nil
	}
	if !sc.noRows {
		if err := o.maybeLoadAll(ctx, scope, sc, len(miss)); err != nil {
			return err
		}
	}
	var rows []Row
	if !sc.noRows {
		var err error
		if rows, err = o.base.Get(ctx, scope, miss); err != nil {
			return err
		}
	}
	j := 0
	for i, p := range pos {
		if p >= 0 {
			continue
		}
		k := keys[i]
		var r Row
		if rows != nil {
			r = rows[j]
		}
		j++
		if q := sc.t.find(k); q >= 0 { // a repeated key, added just before
			pos[i] = q
			continue
		}
		pos[i] = sc.t.insert(k, r)
	}
	return nil
}

// maybeLoadAll reads every row of the scope into the table once the
// batch has read enough of them key by key (fullLoadMin, fullLoadShare),
// before it reads n more.
func (o *overlay) maybeLoadAll(ctx context.Context, scope string, sc *ovScope, n int) error {
	p, ok := o.base.(scopeProber)
	sc.asked += n
	if !ok || sc.asked < fullLoadMin {
		return nil
	}
	if sc.size < 0 {
		size, err := o.base.Size(ctx, scope)
		if err != nil {
			return err
		}
		sc.size = size
	}
	if int64(sc.asked)*int64(fullLoadShare) < sc.size {
		return nil
	}
	// The rows the table holds already are as they were read, or as
	// lessons of the batch left them: they stay.
	err := p.scanScope(ctx, scope, func(k uint64, r Row) {
		if sc.t.find(k) < 0 {
			sc.t.insert(k, r)
		}
	})
	if err != nil {
		return err
	}
	sc.noRows = true
	return nil
}

// Get implements TokenStore. The rows it returns are valid until the
// next Get of the scope (a lesson is done with them by then), so the
// inner loop allocates nothing.
func (o *overlay) Get(ctx context.Context, scope string, keys []uint64) ([]Row, error) {
	sc, err := o.scope(ctx, scope)
	if err != nil {
		return nil, err
	}
	pos := sc.positions(keys)
	if !sc.noRows {
		if err := o.load(ctx, scope, sc, keys, pos); err != nil {
			return nil, err
		}
	}
	out := slices.Grow(sc.out[:0], len(keys))[:len(keys)]
	for i, p := range pos {
		if p >= 0 {
			out[i] = sc.t.at(p).row
		} else {
			out[i] = Row{}
		}
	}
	sc.out = out
	sc.memoKeys = append(sc.memoKeys[:0], keys...)
	sc.memoPos = append(sc.memoPos[:0], pos...)
	sc.memoN = sc.t.n
	return out, nil
}

// Update implements TokenStore: it applies b in memory.
func (o *overlay) Update(ctx context.Context, scope string, b Batch) error {
	sc, err := o.scope(ctx, scope)
	if err != nil {
		return err
	}
	if _, err := o.Totals(ctx, scope); err != nil {
		return err
	}
	d := b.Deltas
	keys := sc.keys[:0]
	for i := range d {
		keys = append(keys, d[i].Key)
	}
	sc.keys = keys
	pos := sc.positions(keys)
	if err := o.load(ctx, scope, sc, keys, pos); err != nil {
		return err
	}
	// A key twice in the batch: the store adds the deltas of a key up
	// first (mergeDeltas), then to the row; so must the overlay.
	sc.stamp++
	for _, p := range pos {
		if e := sc.t.at(p); e.stamp != sc.stamp {
			e.stamp = sc.stamp
		} else {
			d = mergeDeltas(b.Deltas)
			keys = keys[:len(d)]
			for i := range d {
				keys[i] = d[i].Key
			}
			pos = pos[:0]
			for _, k := range keys {
				pos = append(pos, sc.t.find(k))
			}
			break
		}
	}
	for i, x := range d {
		k := sc.t.at(pos[i])
		k.row.Ham += x.Ham
		k.row.Spam += x.Spam
		k.row.W += x.W
		k.row.G += x.G
		k.delta.Ham += x.Ham
		k.delta.Spam += x.Spam
		k.delta.W += x.W
		k.delta.G += x.G
		if k.flags&ovTouched == 0 {
			sc.touched++
		}
		k.flags |= ovTouched | ovExists
		if x.Ham < 0 || x.Spam < 0 {
			k.flags |= ovShrunk
			if k.row.Ham <= 0 && k.row.Spam <= 0 && k.row.W == 0 && k.row.G == 0 {
				k.flags &^= ovExists
			}
		}
	}
	sc.totals = addTotals(sc.totals, b.Totals)
	sc.dtot = addTotals(sc.dtot, b.Totals)
	if l := b.Lesson; l != nil {
		old := sc.lessons[l.FP]
		if !old.written {
			sc.lorder = append(sc.lorder, l.FP)
		}
		sc.lessons[l.FP] = ovLesson{label: l.Label, written: true}
	}
	return nil
}

// Totals implements TokenStore.
func (o *overlay) Totals(ctx context.Context, scope string) (Totals, error) {
	sc, err := o.scope(ctx, scope)
	if err != nil {
		return Totals{}, err
	}
	if !sc.hasTot {
		t, err := o.base.Totals(ctx, scope)
		if err != nil {
			return Totals{}, err
		}
		sc.totals, sc.hasTot = t, true
	}
	return sc.totals, nil
}

// Lesson implements TokenStore.
func (o *overlay) Lesson(ctx context.Context, scope string, fp [32]byte) (Label, error) {
	sc, err := o.scope(ctx, scope)
	if err != nil {
		return Unknown, err
	}
	if l, ok := sc.lessons[fp]; ok {
		return l.label, nil
	}
	if sc.noLessons {
		return Unknown, nil
	}
	l, err := o.base.Lesson(ctx, scope, fp)
	if err != nil {
		return Unknown, err
	}
	sc.lessons[fp] = ovLesson{label: l}
	return l, nil
}

// Size implements TokenStore: the stored size, without pending writes.
func (o *overlay) Size(ctx context.Context, scope string) (int64, error) {
	return o.base.Size(ctx, scope)
}

// pending reports whether there is anything to flush.
func (o *overlay) pending() bool {
	for _, sc := range o.scopes {
		if sc.hasTot && (sc.dtot != Totals{} || len(sc.lorder) > 0) {
			return true
		}
		for p := range sc.t.n {
			if sc.t.at(int32(p)).flags&ovTouched != 0 {
				return true
			}
		}
	}
	return false
}

// flush writes the pending changes in one transaction and forgets
// everything read. The rows of each scope are handed over sorted by key
// (as stored: signed), which Apply wants.
func (o *overlay) flush(ctx context.Context) error {
	var ws []ScopeWrite
	for _, name := range o.order {
		sc := o.scopes[name]
		o.sizes[name] = max(o.sizes[name], sc.t.n)
		if sc.touched == 0 && len(sc.lorder) == 0 && (!sc.hasTot || sc.dtot == Totals{}) {
			continue
		}
		ws = append(ws, sc.write(name))
	}
	o.scopes, o.order = map[string]*ovScope{}, nil
	if len(ws) == 0 {
		return nil
	}
	return o.base.Apply(ctx, ws)
}

// write returns the scope's pending changes. Its rows are sorted on a
// goroutine of their own, so that one scope's rows are sorted while
// Apply writes another's (on two cores: the logistic regression's
// 4-grams while the word model's rows go in).
func (sc *ovScope) write(name string) ScopeWrite {
	w := ScopeWrite{Scope: name, Version: sc.version, Totals: sc.totals, DTotals: sc.dtot}
	var rows []KeyWrite
	sorted := make(chan struct{})
	go func() {
		defer close(sorted)
		type kp struct {
			key int64
			pos int32
		}
		touched := make([]kp, 0, sc.touched)
		sc.t.each(func(p int32, e *ovEnt) {
			if e.flags&ovTouched != 0 {
				touched = append(touched, kp{int64(e.key), p})
			}
		})
		slices.SortFunc(touched, func(a, b kp) int { return cmp.Compare(a.key, b.key) })
		rows = make([]KeyWrite, len(touched))
		for i, t := range touched {
			e := sc.t.at(t.pos)
			rows[i] = KeyWrite{Key: e.key, Row: e.row, Delta: Delta{Key: e.key, Ham: e.delta.Ham, Spam: e.delta.Spam, W: e.delta.W, G: e.delta.G},
				Exists: e.flags&ovExists != 0, Shrunk: e.flags&ovShrunk != 0}
		}
	}()
	w.Rows = func(yield func(KeyWrite) bool) {
		<-sorted
		for _, r := range rows {
			if !yield(r) {
				return
			}
		}
	}
	for _, fp := range sc.lorder {
		w.Lessons = append(w.Lessons, Lesson{FP: fp, Label: sc.lessons[fp].label})
	}
	return w
}
