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
