package queue

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spool sub-directories.
const (
	dirTmp     = "tmp"
	dirReady   = "ready"
	dirHold    = "hold"
	dirCorrupt = "corrupt"
	dirControl = "control"
	lockName   = "lock"
)

const (
	fileMode    = 0o640
	dirMode     = 0o750
	draftBufLen = 64 << 10 // the SMTP session writes through this buffer (pooled)
	maxBatch    = 512      // most renames one directory fsync covers
)

var errClosed = errors.New("queue: closed")

// dirBit names a directory in a commit request's set of directories to fsync.
type dirBit uint8

const (
	bitReady dirBit = 1 << iota
	bitHold
)

func bitFor(dir string) dirBit {
	if dir == dirHold {
		return bitHold
	}
	return bitReady
}

type renameOp struct{ from, to string }

// commitReq is one unit of group commit: renames to do in order, then the
// directories to fsync. The committer answers on done.
type commitReq struct {
	ops  []renameOp
	dirs dirBit
	done chan error
}

// ensureLayout creates the spool directories.
func ensureLayout(dir string) (*os.Root, error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{dirTmp, dirReady, dirHold, dirCorrupt, dirControl} {
		if err := root.Mkdir(d, dirMode); err != nil && !errors.Is(err, os.ErrExist) {
			root.Close()
			return nil, err
		}
	}
	return root, nil
}

// tryLock takes an exclusive flock on the spool's lock file without
// waiting. It returns (nil, nil) when another process holds it.
func tryLock(root *os.Root) (*os.File, error) {
	f, err := root.OpenFile(lockName, os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, err
	}
	return f, nil
}

// committer runs group commits until stop is closed: it takes every request
// waiting, does their renames, fsyncs each affected directory once and
// answers them all.
func (q *Queue) committer() {
	defer close(q.commitDone)
	batch := make([]*commitReq, 0, maxBatch)
	for {
		select {
		case r := <-q.commitCh:
			batch = append(batch[:0], r)
		drain:
			for len(batch) < maxBatch {
				select {
				case r := <-q.commitCh:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			q.commitBatch(batch)
		case <-q.stopCommit:
			return
		}
	}
}

func (q *Queue) commitBatch(batch []*commitReq) {
	errs := make([]error, len(batch))
	var dirs dirBit
	for i, r := range batch {
		for j, op := range r.ops {
			if err := q.root.Rename(op.from, op.to); err != nil {
				errs[i] = err
				// Undo this request's earlier renames so nothing is
				// left half-moved.
				for k := j - 1; k >= 0; k-- {
					q.root.Rename(r.ops[k].to, r.ops[k].from)
				}
				break
			}
		}
		if errs[i] == nil {
			dirs |= r.dirs
		}
	}
	for _, d := range []struct {
		bit  dirBit
		name string
	}{{bitReady, dirReady}, {bitHold, dirHold}} {
		if dirs&d.bit == 0 {
			continue
		}
		if err := q.syncDir(d.name); err != nil {
			for i, r := range batch {
				if errs[i] == nil && r.dirs&d.bit != 0 {
					errs[i] = err
				}
			}
		}
	}
	q.m.batchSize.Observe(float64(len(batch)))
	for i, r := range batch {
		r.done <- errs[i]
	}
}

func (q *Queue) syncDir(name string) error {
	if q.syncDirHook != nil {
		if err := q.syncDirHook(name); err != nil {
			return err
		}
	}
	return q.dirs.files[dirIndex(name)].Sync()
}

// commit submits renames to the group committer and waits until they and
// their directories are durable.
func (q *Queue) commit(ops []renameOp, dirs dirBit) error {
	r := &commitReq{ops: ops, dirs: dirs, done: make(chan error, 1)}
	select {
	case q.commitCh <- r:
	case <-q.stopCommit:
		return errClosed
	}
	return <-r.done
}

func path(dir, id, ext string) string { return dir + "/" + id + ext }

// castagnoli is the CRC-32C table (hardware-accelerated on amd64/arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// writerPool recycles the draft write buffers: allocating (and zeroing)
// a fresh one per message was a tenth of the CPU at 20 sessions.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, draftBufLen) }}

// writeEnvTmp writes env as JSON to a new file in tmp/ and returns it
// open, not yet fsync'ed, with its name in tmp/.
func (q *Queue) writeEnvTmp(env *Envelope) (*os.File, string, error) {
	b, err := json.Marshal(env)
	if err != nil {
		return nil, "", err
	}
	name := env.ID + ".env." + strconv.FormatUint(q.seq.Add(1), 10)
	f, err := q.openAt(dirTmp, name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return nil, "", err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		q.removeAt(dirTmp, name)
		return nil, "", err
	}
	return f, name, nil
}

// persist durably replaces dir/<id>.env with env: write tmp, fsync, rename
// (by the group committer), fsync the directory. Call it holding e.pmu.
func (q *Queue) persist(e *entry, env *Envelope, dir string) error {
	f, name, err := q.writeEnvTmp(env)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = q.commit([]renameOp{{dirTmp + "/" + name, path(dir, env.ID, ".env")}}, bitFor(dir))
	}
	if err != nil {
		q.removeAt(dirTmp, name)
		return err
	}
	e.hasEnv = true
	return nil
}

// Draft is a message being received. Write the bytes, let checks read
// them with Open, then Commit or Abort. A Draft is used by one goroutine;
// readers returned by Open may be used concurrently.
type Draft struct {
	q    *Queue
	id   string
	f    *os.File
	w    *bufio.Writer // from writerPool; nil once returned
	n    int64
	crc  uint32 // CRC-32C of the bytes written
	err  error  // sticky write error
	done bool
}

// NewDraft starts receiving a message into tmp/<id>.eml.
func (q *Queue) NewDraft() (*Draft, error) {
	if q.closed.Load() {
		return nil, errClosed
	}
	for range 3 {
		id := newID(q.now())
		f, err := q.openAt(dirTmp, id+".eml", os.O_RDWR|os.O_CREATE|os.O_EXCL, fileMode)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		w := writerPool.Get().(*bufio.Writer)
		w.Reset(f)
		return &Draft{q: q, id: id, f: f, w: w}, nil
	}
	return nil, errors.New("queue: could not create a unique draft")
}

// ID returns the queue ID the message will have.
func (d *Draft) ID() string { return d.id }

// Size returns how many bytes were written so far.
func (d *Draft) Size() int64 { return d.n }

// Write appends message bytes.
func (d *Draft) Write(p []byte) (int, error) {
	if d.done {
		return 0, errors.New("queue: draft already committed or aborted")
	}
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.w.Write(p)
	d.n += int64(n)
	d.crc = crc32.Update(d.crc, castagnoli, p[:n])
	d.err = err
	return n, err
}

// Open returns a reader over everything written so far. It flushes the
// write buffer; the reader is independent of further writes and of
// Commit. Close it when done.
func (d *Draft) Open() (io.ReadCloser, error) {
	if d.done {
		return nil, errors.New("queue: draft already committed or aborted")
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := d.w.Flush(); err != nil {
		d.err = err
		return nil, err
	}
	// A descriptor of its own: the reader stays valid across Commit
	// (rename) and even Abort (unlink), and must be closed.
	f, err := d.q.openAt(dirTmp, d.id+".eml", os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, d.n), f}, nil
}

// release returns the write buffer to the pool.
func (d *Draft) release() {
	if d.w != nil {
		d.w.Reset(nil)
		writerPool.Put(d.w)
		d.w = nil
	}
}

// Abort discards the draft. It is safe to call after Commit (it then does
// nothing) and more than once.
func (d *Draft) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.release()
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
	d.q.removeAt(dirTmp, d.id+".eml")
}

// Commit makes the message and env durable and queues it for delivery.
// When it returns nil, the bytes and the envelope are fsync'ed and their
// directory entries are in ready/ and fsync'ed. On error nothing is left in
// ready/ and the draft is discarded; the caller answers 451 4.3.0.
//
// Commit copies env, filling in ID, Size, BodyCRC32C and (if zero)
// Received; recipients with an empty Status are pending.
func (d *Draft) Commit(env *Envelope) error {
	if d.done {
		return errors.New("queue: draft already committed or aborted")
	}
	start := time.Now()
	err := d.commit(env)
	if err != nil {
		d.Abort()
		d.q.m.commitErrors.Inc()
		return err
	}
	d.done = true
	d.q.m.commitLatency.Observe(time.Since(start).Seconds())
	return nil
}

// commit makes the draft a queue entry with one round of fsyncs: the
// envelope is appended to the message file as its trailer (see
// appendTrailer), the file is renamed into ready/, and then the file and
// ready/ are fsync'ed at the same time (the directory by the group
// committer, shared with concurrent commits), so the file system can cover
// them with one journal commit. Only when both are durable does Commit
// return.
//
// A crash before that may leave a ready/<id>.eml that is incomplete, since
// the rename can reach the disk before the data. That message was never
// acknowledged, and recovery recognises it: a file without an intact
// trailer is an uncommitted draft and is removed, and one whose bytes do
// not match the size and CRC-32C in its trailer goes to corrupt/ instead
// of being delivered (see Queue.recover, Queue.load and Queue.checkBody).
func (d *Draft) commit(in *Envelope) error {
	q := d.q
	if q.closed.Load() {
		return errClosed
	}
	if d.err != nil {
		return d.err
	}
	env, err := q.prepareEnv(in, d.id, d.n)
	if err != nil {
		return err
	}
	env.BodyCRC32C = d.crc
	b, err := json.Marshal(env)
	if err != nil {
		return err
	}
	if err := appendTrailer(d.w, b); err != nil {
		return err
	}
	if err := d.w.Flush(); err != nil {
		return err
	}
	d.release()
	eml := d.id + ".eml"
	if err := q.renameAt(dirTmp, eml, dirReady, eml); err != nil {
		return err
	}
	// The file's fsync here, the directory's by the group committer
	// (shared with concurrent commits), at the same time.
	dirReq := &commitReq{dirs: bitReady, done: make(chan error, 1)}
	var dirErr error
	select {
	case q.commitCh <- dirReq:
	case <-q.stopCommit:
		dirErr = errClosed
	}
	err = d.f.Sync()
	if dirErr == nil {
		dirErr = <-dirReq.done
	}
	if err == nil {
		err = dirErr
	}
	if cerr := d.f.Close(); err == nil {
		err = cerr
	}
	d.f = nil
	if err != nil {
		q.removeAt(dirReady, eml)
		return fmt.Errorf("queue: commit %s: %w", d.id, err)
	}
	q.add(env, dirReady, false)
	return nil
}

// prepareEnv copies and completes an envelope for a new message.
func (q *Queue) prepareEnv(in *Envelope, id string, size int64) (*Envelope, error) {
	if in == nil || len(in.Rcpts) == 0 {
		return nil, errors.New("queue: envelope without recipients")
	}
	if !validAddr(in.From) {
		return nil, errors.New("queue: bad sender address")
	}
	env := cloneEnv(in)
	env.ID = id
	env.Size = size
	if env.Received.IsZero() {
		env.Received = q.now()
	}
	for i := range env.Rcpts {
		r := &env.Rcpts[i]
		if r.Addr == "" || !validAddr(r.Addr) || !validAddr(r.Domain) || strings.Contains(r.Domain, "/") {
			return nil, errors.New("queue: bad recipient address")
		}
		if r.Status == "" {
			r.Status = StatusPending
		}
	}
	return env, nil
}

func cloneEnv(e *Envelope) *Envelope {
	c := *e
	c.Rcpts = append([]RcptState(nil), e.Rcpts...)
	return &c
}

// Enqueue queues a message Moat generates or releases (DSNs, quarantine
// releases, digests) with the same durability as Draft.Commit.
func (q *Queue) Enqueue(env *Envelope, body io.Reader) (string, error) {
	d, err := q.NewDraft()
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(d, body); err != nil {
		d.Abort()
		return "", err
	}
	if err := d.Commit(env); err != nil {
		return "", err
	}
	return d.id, nil
}
