package queue

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Queue is the durable spool plus the delivery scheduler.
type Queue struct {
	cfg  Config
	d    Deliverer
	log  *slog.Logger
	root *os.Root
	dirs *dirs // tmp/, ready/, hold/ kept open for the *at calls
	lock *os.File
	m    *metrics
	now  func() time.Time
	seq  atomic.Uint64

	commitCh    chan *commitReq
	stopCommit  chan struct{}
	commitDone  chan struct{}
	closed      atomic.Bool
	closeOnce   sync.Once
	syncDirHook func(dir string) error // tests: inject fsync failures
	ctlInterval time.Duration          // how often Run looks for control requests

	wake     chan struct{}
	inflight sync.WaitGroup
	dctx     context.Context // deliveries; cancelled after the shutdown grace
	dcancel  context.CancelFunc

	mu        sync.Mutex
	msgs      map[string]*entry
	heap      jobHeap
	parked    map[string][]*job // due, but their domain is at per_domain
	active    int
	domActive map[string]int
	running   bool // Run is dispatching
	// owed are finished messages whose failure DSN could not be queued
	// yet (disk full): kept on disk, retried by Run, never dropped.
	owed map[string]*owedDSN
}

// owedDSN is a finished message still owing its sender a failure DSN.
type owedDSN struct {
	env    *Envelope
	dir    string
	hasEnv bool
	next   time.Time
}

// owedRetry is how long a DSN that could not be queued waits for the
// next try.
const owedRetry = time.Minute

// owesDSN reports whether env's sender is still owed a failure DSN.
func owesDSN(env *Envelope) bool {
	if env.From == "" || env.IsDSN {
		return false
	}
	for _, r := range env.Rcpts {
		if r.Status == StatusFailed && !r.Notified {
			return true
		}
	}
	return false
}

// entry is one message known to the scheduler. Its fields are guarded by
// Queue.mu; pmu serialises file changes (persist, hold, delete).
type entry struct {
	env     *Envelope
	dir     string // dirReady or dirHold
	jobs    map[string]*job
	running int
	gone    bool // deleted or finished
	hasEnv  bool // a <id>.env supersedes the .eml's trailer (guarded by pmu)
	pmu     sync.Mutex
}

// Open opens (creating if needed) the spool in cfg.SpoolDir, takes its lock
// (waiting up to 5 s for a `moat queue` command to finish), recovers state
// from disk and starts the group committer. Call Run to deliver and Close
// when done. reg may be nil (metrics are then not exported).
func Open(cfg Config, d Deliverer, log *slog.Logger, reg prometheus.Registerer) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root, err := ensureLayout(cfg.SpoolDir)
	if err != nil {
		return nil, fmt.Errorf("queue: spool_dir: %w", err)
	}
	var lock *os.File
	for i := 0; ; i++ {
		lock, err = tryLock(root)
		if err != nil || lock != nil {
			break
		}
		if i == 100 {
			root.Close()
			return nil, fmt.Errorf("queue: spool_dir %s is locked by another process (is moat serve running?)", cfg.SpoolDir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("queue: lock: %w", err)
	}
	q, err := openLocked(cfg, d, log, reg, root, lock)
	if err != nil {
		lock.Close()
		root.Close()
		return nil, err
	}
	return q, nil
}

func openLocked(cfg Config, d Deliverer, log *slog.Logger, reg prometheus.Registerer, root *os.Root, lock *os.File) (*Queue, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	q := &Queue{
		cfg:         cfg,
		d:           d,
		log:         log,
		root:        root,
		lock:        lock,
		now:         time.Now,
		ctlInterval: time.Second,
		commitCh:    make(chan *commitReq),
		stopCommit:  make(chan struct{}),
		commitDone:  make(chan struct{}),
		wake:        make(chan struct{}, 1),
		msgs:        make(map[string]*entry),
		parked:      make(map[string][]*job),
		domActive:   make(map[string]int),
		owed:        make(map[string]*owedDSN),
	}
	q.dctx, q.dcancel = context.WithCancel(context.Background())
	ds, err := openDirs(root)
	if err != nil {
		return nil, fmt.Errorf("queue: spool_dir: %w", err)
	}
	q.dirs = ds
	m, err := newMetrics(q, reg)
	if err != nil {
		ds.close()
		return nil, err
	}
	q.m = m
	if err := q.recover(); err != nil {
		ds.close()
		return nil, err
	}
	go q.committer()
	return q, nil
}

// Close stops the committer and releases the spool lock. Call it after Run
// has returned. Commits in progress finish first; later ones fail.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() {
		q.closed.Store(true)
		close(q.stopCommit)
		<-q.commitDone
		q.dcancel()
		q.lock.Close() // releases the flock
		q.dirs.close()
		q.root.Close()
	})
	return nil
}

// recover rebuilds the in-memory state from the spool.
func (q *Queue) recover() error {
	// tmp/: drafts and envelope rewrites of a previous run.
	ents, err := q.readDir(dirTmp)
	if err != nil {
		return err
	}
	cutoff := q.now().Add(-time.Minute)
	for _, de := range ents {
		if info, err := de.Info(); err == nil && info.ModTime().Before(cutoff) {
			q.root.Remove(dirTmp + "/" + de.Name())
		}
	}
	names := map[string]map[string]bool{}
	for _, dir := range []string{dirReady, dirHold} {
		ents, err := q.readDir(dir)
		if err != nil {
			return err
		}
		names[dir] = map[string]bool{}
		for _, de := range ents {
			names[dir][de.Name()] = true
		}
	}
	other := map[string]string{dirReady: dirHold, dirHold: dirReady}
	for _, dir := range []string{dirReady, dirHold} {
		for name := range names[dir] {
			id, ext, _ := strings.Cut(name, ".")
			switch {
			case !ValidID(id) || (ext != "env" && ext != "eml"):
				q.log.Warn("queue: unexpected file in spool, moved to corrupt/", "file", dir+"/"+name)
				q.toCorrupt(dir + "/" + name)
			case ext == "eml":
				if names[dir][id+".env"] || names[other[dir]][id+".env"] {
					continue // loaded with its .env
				}
				q.load(id, dir)
			case ext == "env":
				if !names[dir][id+".eml"] {
					switch {
					case names[other[dir]][id+".eml"] && q.root.Rename(path(other[dir], id, ".eml"), path(dir, id, ".eml")) == nil:
						// A hold/release interrupted between its two renames.
						q.log.Info("queue: completed an interrupted move", "queue_id", id, "dir", dir)
					default:
						// The bytes go first when a message is removed, so
						// this is most likely a removal cut short.
						q.log.Warn("queue: envelope without message, moved to corrupt/", "queue_id", id, "dir", dir)
						q.toCorrupt(path(dir, id, ".env"))
						continue
					}
				}
				q.load(id, dir)
			}
		}
	}
	return nil
}

func (q *Queue) readDir(dir string) ([]fs.DirEntry, error) {
	f, err := q.root.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

const maxEnvSize = 16 << 20

// load reads one committed message into the scheduler.
func (q *Queue) load(id, dir string) {
	env, hasEnv, err := readEnvelope(q.root, dir, id)
	if !hasEnv && errors.Is(err, errNoTrailer) {
		// Bytes without a committed envelope: an uncommitted draft.
		q.log.Info("queue: removing uncommitted message", "queue_id", id, "file", path(dir, id, ".eml"))
		q.root.Remove(path(dir, id, ".eml"))
		return
	}
	if err == nil && neverAttempted(env) {
		err = q.checkBody(env, dir)
	}
	if err != nil {
		q.log.Error("queue: unreadable envelope, moved to corrupt/", "queue_id", id, "dir", dir, "err", err)
		if hasEnv {
			q.toCorrupt(path(dir, id, ".env"))
		}
		q.toCorrupt(path(dir, id, ".eml"))
		return
	}
	if pendingCount(env) == 0 {
		if owesDSN(env) { // its DSN could not be queued before the stop
			q.log.Warn("queue: finished message still owes its sender a DSN; retrying", "queue_id", id)
			q.mu.Lock()
			q.owed[id] = &owedDSN{env: env, dir: dir, hasEnv: hasEnv}
			q.mu.Unlock()
			return
		}
		q.log.Info("queue: removing finished message", "queue_id", id)
		q.removeFiles(id, dir, hasEnv)
		return
	}
	q.add(env, dir, hasEnv)
}

// neverAttempted reports whether no delivery of env was attempted yet: only
// then can its commit have been cut short by a crash (a message is
// delivered only after its commit completed).
func neverAttempted(env *Envelope) bool {
	for _, r := range env.Rcpts {
		if r.Attempts > 0 {
			return false
		}
	}
	return true
}

// checkBody verifies the .eml against the size and CRC-32C its envelope
// recorded at commit. A mismatch means the bytes never became durable (a
// crash during a commit, before the 250) or were damaged on disk.
func (q *Queue) checkBody(env *Envelope, dir string) error {
	if env.BodyCRC32C == 0 {
		return nil // written before checksums, or a CRC of 0
	}
	f, err := q.openAt(dir, env.ID+".eml", os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, io.LimitReader(f, env.Size))
	if err != nil {
		return err
	}
	if n != env.Size || h.Sum32() != env.BodyCRC32C {
		return fmt.Errorf("message bytes do not match the envelope (%d bytes, crc32c %08x; want %d, %08x): commit interrupted by a crash, or damaged",
			n, h.Sum32(), env.Size, env.BodyCRC32C)
	}
	return nil
}

func (q *Queue) readFileLimit(name string, limit int64) ([]byte, error) {
	f, err := q.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes is too large", name, st.Size())
	}
	b := make([]byte, st.Size())
	_, err = f.ReadAt(b, 0)
	return b, err
}

// toCorrupt moves a spool file into corrupt/, never overwriting.
func (q *Queue) toCorrupt(name string) {
	base := name[strings.LastIndexByte(name, '/')+1:]
	dst := dirCorrupt + "/" + base
	if _, err := q.root.Lstat(dst); err == nil {
		dst = fmt.Sprintf("%s.%d", dst, q.now().UnixNano())
	}
	if err := q.root.Rename(name, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		q.log.Error("queue: cannot move to corrupt/", "file", name, "err", err)
	}
}

// removeFiles deletes a message: the bytes (with the envelope committed
// in their trailer) first, then a later .env if there is one. A crash in
// between leaves a .env without message, which recovery sets aside; the
// other order could bring back the committed envelope and deliver again.
func (q *Queue) removeFiles(id, dir string, hasEnv bool) error {
	err := q.removeAt(dir, id+".eml")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if !hasEnv {
		return nil
	}
	err = q.removeAt(dir, id+".env")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func pendingCount(env *Envelope) int {
	n := 0
	for _, r := range env.Rcpts {
		if r.Status == StatusPending {
			n++
		}
	}
	return n
}

type queueStats struct {
	messages, rcpts int
	oldest          float64
}

func (q *Queue) stats() queueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := queueStats{messages: len(q.msgs)}
	var oldest time.Time
	for _, e := range q.msgs {
		s.rcpts += pendingCount(e.env)
		if oldest.IsZero() || e.env.Received.Before(oldest) {
			oldest = e.env.Received
		}
	}
	if !oldest.IsZero() {
		s.oldest = q.now().Sub(oldest).Seconds()
	}
	return s
}
