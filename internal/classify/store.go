package classify

import (
	"context"
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
	// Update applies a batch atomically.
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
	// Apply writes ws in one transaction (it may reorder ws and their
	// rows). For each w, if the scope's
	// version is still w.Version, the rows, totals and lessons are set
	// to w's values (so the stored model is bit for bit what learning the
	// lessons one by one would have stored); otherwise another writer
	// came in between and w's deltas are added as Update adds them.
	Apply(ctx context.Context, ws []ScopeWrite) error
}

// ScopeWrite is the net change of one scope after a run of lessons.
type ScopeWrite struct {
	Scope   string
	Version int64 // the scope's version before the first lesson read it
	Rows    []KeyWrite
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
type overlay struct {
	base   BulkStore
	scopes map[string]*ovScope
	order  []string
}

type ovKey struct {
	row            Row
	delta          Delta
	touched        bool
	exists, shrunk bool
}

type ovScope struct {
	version int64
	rows    map[uint64]*ovKey
	totals  Totals
	dtot    Totals
	hasTot  bool
	lessons map[[32]byte]Label
	written map[[32]byte]bool
	lorder  [][32]byte
}

func newOverlay(base BulkStore) *overlay {
	return &overlay{base: base, scopes: map[string]*ovScope{}}
}

func (o *overlay) scope(ctx context.Context, name string) (*ovScope, error) {
	if sc := o.scopes[name]; sc != nil {
		return sc, nil
	}
	v, err := o.base.Version(ctx, name) // before anything of the scope is read
	if err != nil {
		return nil, err
	}
	sc := &ovScope{version: v, rows: map[uint64]*ovKey{}, lessons: map[[32]byte]Label{}, written: map[[32]byte]bool{}}
	o.scopes[name] = sc
	o.order = append(o.order, name)
	return sc, nil
}

// Get implements TokenStore.
func (o *overlay) Get(ctx context.Context, scope string, keys []uint64) ([]Row, error) {
	sc, err := o.scope(ctx, scope)
	if err != nil {
		return nil, err
	}
	var miss []uint64
	for _, k := range keys {
		if sc.rows[k] == nil {
			miss = append(miss, k)
		}
	}
	if len(miss) > 0 {
		rows, err := o.base.Get(ctx, scope, miss)
		if err != nil {
			return nil, err
		}
		for i, k := range miss {
			sc.rows[k] = &ovKey{row: rows[i]}
		}
	}
	out := make([]Row, len(keys))
	for i, k := range keys {
		out[i] = sc.rows[k].row
	}
	return out, nil
}

// Update implements TokenStore: it applies b in memory.
func (o *overlay) Update(ctx context.Context, scope string, b Batch) error {
	sc, err := o.scope(ctx, scope)
	if err != nil {
		return err
	}
	d := mergeDeltas(b.Deltas)
	var miss []uint64
	for _, x := range d {
		if sc.rows[x.Key] == nil {
			miss = append(miss, x.Key)
		}
	}
	if len(miss) > 0 {
		if _, err := o.Get(ctx, scope, miss); err != nil {
			return err
		}
	}
	if _, err := o.Totals(ctx, scope); err != nil {
		return err
	}
	for _, x := range d {
		k := sc.rows[x.Key]
		k.row.Ham += x.Ham
		k.row.Spam += x.Spam
		k.row.W += x.W
		k.row.G += x.G
		k.delta.Ham += x.Ham
		k.delta.Spam += x.Spam
		k.delta.W += x.W
		k.delta.G += x.G
		k.touched, k.exists = true, true
		if x.Ham < 0 || x.Spam < 0 {
			k.shrunk = true
			if k.row.Ham <= 0 && k.row.Spam <= 0 && k.row.W == 0 && k.row.G == 0 {
				k.exists = false
			}
		}
	}
	sc.totals = addTotals(sc.totals, b.Totals)
	sc.dtot = addTotals(sc.dtot, b.Totals)
	if l := b.Lesson; l != nil {
		sc.lessons[l.FP] = l.Label
		if !sc.written[l.FP] {
			sc.written[l.FP] = true
			sc.lorder = append(sc.lorder, l.FP)
		}
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
		return l, nil
	}
	l, err := o.base.Lesson(ctx, scope, fp)
	if err != nil {
		return Unknown, err
	}
	sc.lessons[fp] = l
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
		for _, k := range sc.rows {
			if k.touched {
				return true
			}
		}
	}
	return false
}

// flush writes the pending changes in one transaction and forgets
// everything read.
func (o *overlay) flush(ctx context.Context) error {
	var ws []ScopeWrite
	for _, name := range o.order {
		sc := o.scopes[name]
		w := ScopeWrite{Scope: name, Version: sc.version, Totals: sc.totals, DTotals: sc.dtot}
		n := 0
		for _, k := range sc.rows {
			if k.touched {
				n++
			}
		}
		w.Rows = make([]KeyWrite, 0, n)
		for key, k := range sc.rows {
			if k.touched {
				w.Rows = append(w.Rows, KeyWrite{Key: key, Row: k.row, Delta: Delta{Key: key, Ham: k.delta.Ham, Spam: k.delta.Spam, W: k.delta.W, G: k.delta.G},
					Exists: k.exists, Shrunk: k.shrunk})
			}
		}
		for _, fp := range sc.lorder {
			w.Lessons = append(w.Lessons, Lesson{FP: fp, Label: sc.lessons[fp]})
		}
		if len(w.Rows) == 0 && len(w.Lessons) == 0 && (!sc.hasTot || sc.dtot == Totals{}) {
			continue
		}
		ws = append(ws, w)
	}
	o.scopes, o.order = map[string]*ovScope{}, nil
	if len(ws) == 0 {
		return nil
	}
	return o.base.Apply(ctx, ws)
}
