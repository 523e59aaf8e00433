package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"
)

// ErrHeld is returned by RetryNow for a message on hold.
var ErrHeld = errors.New("queue: message is on hold (release it first)")

func summarize(env *Envelope, held bool) Summary {
	s := Summary{Envelope: *env, Held: held}
	first := true
	for _, r := range env.Rcpts {
		if r.Status == StatusPending && (first || r.Next.Before(s.NextAttempt)) {
			s.NextAttempt, first = r.Next, false
		}
	}
	return s
}

func (f Filter) match(s *Summary) bool {
	if f.HeldOnly && !s.Held {
		return false
	}
	if f.Domain == "" {
		return true
	}
	return hasPendingIn(&s.Envelope, f.Domain)
}

func hasPendingIn(env *Envelope, domain string) bool {
	for i := range env.Rcpts {
		if pendingIn(&env.Rcpts[i], domain) {
			return true
		}
	}
	return false
}

// pendingIn reports whether r is pending and in domain ("" = any domain).
func pendingIn(r *RcptState, domain string) bool {
	return r.Status == StatusPending && (domain == "" || strings.EqualFold(r.Domain, domain) ||
		strings.HasSuffix(strings.ToLower(r.Addr), "@"+strings.ToLower(domain)))
}

// List returns the queued messages matching f, oldest first.
func (q *Queue) List(f Filter) []Summary {
	q.mu.Lock()
	out := make([]Summary, 0, len(q.msgs))
	for _, e := range q.msgs {
		s := summarize(cloneEnv(e.env), e.dir == dirHold)
		if f.match(&s) {
			out = append(out, s)
		}
	}
	q.mu.Unlock()
	slices.SortFunc(out, func(a, b Summary) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Show returns one message.
func (q *Queue) Show(id string) (Summary, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.msgs[id]
	if e == nil {
		return Summary{}, ErrNotFound
	}
	return summarize(cloneEnv(e.env), e.dir == dirHold), nil
}

// lockEntry returns the entry with its pmu held, or nil.
func (q *Queue) lockEntry(id string) *entry {
	q.mu.Lock()
	e := q.msgs[id]
	q.mu.Unlock()
	if e == nil {
		return nil
	}
	e.pmu.Lock()
	return e
}

// lockLive returns the entry with its pmu and q.mu held, or ErrNotFound
// (nothing held) when there is no such message or it is gone meanwhile.
// The caller unlocks q.mu, then e.pmu.
func (q *Queue) lockLive(id string) (*entry, error) {
	e := q.lockEntry(id)
	if e == nil {
		return nil, ErrNotFound
	}
	q.mu.Lock()
	if e.gone {
		q.mu.Unlock()
		e.pmu.Unlock()
		return nil, ErrNotFound
	}
	return e, nil
}

// RetryNow makes every pending recipient of the message due now.
func (q *Queue) RetryNow(id string) error {
	e, err := q.lockLive(id)
	if err != nil {
		return err
	}
	defer e.pmu.Unlock()
	if e.dir == dirHold {
		q.mu.Unlock()
		return ErrHeld
	}
	q.dueNowLocked(e, "")
	snap, dir := cloneEnv(e.env), e.dir
	q.mu.Unlock()
	q.log.Info("queue: retry requested", "queue_id", id)
	q.signal()
	return q.persist(e, snap, dir)
}

func (q *Queue) dueNowLocked(e *entry, domain string) {
	now := q.now()
	for i := range e.env.Rcpts {
		if r := &e.env.Rcpts[i]; pendingIn(r, domain) {
			r.Next = now
		}
	}
	q.scheduleLocked(e)
}

// RetryDomain makes every pending recipient in domain due now ("the
// customer's server is back") and returns how many messages it touched.
// Held messages stay held.
func (q *Queue) RetryDomain(domain string) int {
	q.mu.Lock()
	var ids []string
	for id, e := range q.msgs {
		if e.dir != dirHold && hasPendingIn(e.env, domain) {
			ids = append(ids, id)
		}
	}
	q.mu.Unlock()
	n := 0
	for _, id := range ids {
		e := q.lockEntry(id)
		if e == nil {
			continue
		}
		q.mu.Lock()
		if e.gone || e.dir == dirHold {
			q.mu.Unlock()
			e.pmu.Unlock()
			continue
		}
		q.dueNowLocked(e, domain)
		snap, dir := cloneEnv(e.env), e.dir
		q.mu.Unlock()
		if err := q.persist(e, snap, dir); err != nil {
			q.log.Error("queue: cannot persist envelope", "queue_id", id, "err", err)
		}
		e.pmu.Unlock()
		n++
	}
	q.log.Info("queue: domain retry requested", "domain", domain, "messages", n)
	q.signal()
	return n
}

// Delete removes a message without a DSN. A delivery in flight finishes,
// but its result is discarded.
func (q *Queue) Delete(id string) error {
	e, err := q.lockLive(id)
	if err != nil {
		return err
	}
	defer e.pmu.Unlock()
	e.gone = true
	delete(q.msgs, id)
	q.unscheduleLocked(e)
	dir := e.dir
	q.mu.Unlock()
	if err := q.removeFiles(id, dir, e.hasEnv); err != nil {
		return err
	}
	q.log.Info("queue: deleted by admin", "queue_id", id)
	return q.syncDir(dir)
}

// Hold moves a message to hold/: it is kept but not delivered until
// Release. A delivery in flight finishes and its result is recorded.
func (q *Queue) Hold(id string) error { return q.move(id, dirReady, dirHold) }

// Release moves a held message back to ready/ and makes it due now.
func (q *Queue) Release(id string) error { return q.move(id, dirHold, dirReady) }

func (q *Queue) move(id, from, to string) error {
	e, err := q.lockLive(id)
	if err != nil {
		return err
	}
	defer e.pmu.Unlock()
	if e.dir != from {
		q.mu.Unlock()
		return nil // already there
	}
	if to == dirHold {
		e.dir = dirHold // stop new attempts while the files move
		q.unscheduleLocked(e)
	}
	q.mu.Unlock()

	// The bytes first, then the marker: recovery completes a move
	// interrupted in between.
	ops := []renameOp{{path(from, id, ".eml"), path(to, id, ".eml")}}
	if e.hasEnv {
		ops = append(ops, renameOp{path(from, id, ".env"), path(to, id, ".env")})
	}
	err = q.commit(ops, bitReady|bitHold)

	q.mu.Lock()
	if err != nil {
		e.dir = from
		q.scheduleLocked(e)
		q.mu.Unlock()
		return err
	}
	e.dir = to
	if to == dirReady {
		q.dueNowLocked(e, "")
	}
	q.mu.Unlock()
	q.signal()
	q.log.Info("queue: moved by admin", "queue_id", id, "to", to)
	return nil
}

// Control requests: `moat queue` writes control/<reqid>.req while the
// daemon holds the spool lock; the daemon answers in control/<reqid>.resp.

type ctlRequest struct {
	Op     string `json:"op"` // retry, retry-domain, delete, hold, release, enqueue
	ID     string `json:"id,omitempty"`
	Domain string `json:"domain,omitempty"`
	// Enqueue: the envelope, and the message in control/<ID>.eml.
	Env *Envelope `json:"env,omitempty"`
}

type ctlResponse struct {
	OK       bool   `json:"ok"`
	QueueID  string `json:"queue_id,omitempty"`
	NotFound bool   `json:"not_found,omitempty"`
	Error    string `json:"error,omitempty"`
	Count    int    `json:"count,omitempty"`
}

func (q *Queue) exec(r ctlRequest) ctlResponse {
	var err error
	var n int
	switch r.Op {
	case "retry":
		err = q.RetryNow(r.ID)
	case "retry-domain":
		if r.Domain == "" {
			err = errors.New("empty domain")
		} else {
			n = q.RetryDomain(r.Domain)
		}
	case "delete":
		err = q.Delete(r.ID)
	case "hold":
		err = q.Hold(r.ID)
	case "release":
		err = q.Release(r.ID)
	case "enqueue":
		var qid string
		qid, err = q.enqueueControlFile(r)
		if err == nil {
			return ctlResponse{OK: true, QueueID: qid}
		}
	default:
		err = fmt.Errorf("unknown operation %q", r.Op)
	}
	switch {
	case err == nil:
		return ctlResponse{OK: true, Count: n}
	case errors.Is(err, ErrNotFound):
		return ctlResponse{NotFound: true, Error: err.Error()}
	default:
		return ctlResponse{Error: err.Error()}
	}
}

// pollControl answers pending control requests.
func (q *Queue) pollControl() {
	ents, err := q.readDir(dirControl)
	if err != nil {
		q.log.Error("queue: cannot read control directory", "err", err)
		return
	}
	old := q.now().Add(-time.Minute)
	for _, de := range ents {
		name := de.Name()
		id, ext, _ := strings.Cut(name, ".")
		if ext != "req" || !ValidID(id) {
			// Answers nobody collected, and stray files.
			if info, err := de.Info(); err == nil && info.ModTime().Before(old) {
				q.root.Remove(dirControl + "/" + name)
			}
			continue
		}
		b, err := q.readFileLimit(dirControl+"/"+name, 64<<10)
		var resp ctlResponse
		var req ctlRequest
		if err == nil {
			err = json.Unmarshal(b, &req)
		}
		if err != nil {
			resp = ctlResponse{Error: "bad request: " + err.Error()}
		} else {
			// For enqueue, ID names the request's files, not a message:
			// queue_id is only the message an operation acts on.
			attrs := []any{"op", req.Op, "request_id", id}
			if req.Op != "enqueue" && req.ID != "" {
				attrs = append(attrs, "queue_id", req.ID)
			}
			if req.Domain != "" {
				attrs = append(attrs, "domain", req.Domain)
			}
			q.log.Info("queue: control request", attrs...)
			resp = q.exec(req)
		}
		out, _ := json.Marshal(resp)
		if err := q.writeAtomic(dirControl+"/"+id+".resp", out); err != nil {
			q.log.Error("queue: cannot answer control request", "err", err)
		}
		q.root.Remove(dirControl + "/" + name)
	}
}

// writeAtomic writes name via a temporary file and a rename.
func writeAtomic(root *os.Root, name string, b []byte) error {
	tmp := name + ".tmp"
	if err := root.WriteFile(tmp, b, fileMode); err != nil {
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}

func (q *Queue) writeAtomic(name string, b []byte) error { return writeAtomic(q.root, name, b) }

// Client steers a spool from another process (`moat queue`). Reads go to
// the files directly. Changes are made directly when no daemon holds the
// spool lock, and otherwise are handed to the daemon through control/,
// which answers within about a second.
type Client struct {
	dir string
	// Timeout bounds the wait for the daemon's answer (default 10 s).
	Timeout time.Duration
	// Log receives the recovery log of a direct (daemon-less) change.
	Log *slog.Logger
}

// NewClient returns a Client for the spool in dir.
func NewClient(dir string) *Client { return &Client{dir: dir, Timeout: 10 * time.Second} }

func (c *Client) openRoot() (*os.Root, error) {
	root, err := os.OpenRoot(c.dir)
	if err != nil {
		return nil, fmt.Errorf("spool_dir %s: %w", c.dir, err)
	}
	if _, err := root.Stat(dirReady); err != nil {
		root.Close()
		return nil, fmt.Errorf("spool_dir %s: not a Moat spool: %w", c.dir, err)
	}
	return root, nil
}

// List reads the queued messages matching f from disk, oldest first.
func (c *Client) List(f Filter) ([]Summary, error) {
	root, err := c.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var out []Summary
	for _, dir := range []string{dirReady, dirHold} {
		d, err := root.Open(dir)
		if err != nil {
			return nil, err
		}
		ents, err := d.ReadDir(-1)
		d.Close()
		if err != nil {
			return nil, err
		}
		for _, de := range ents {
			id, ext, _ := strings.Cut(de.Name(), ".")
			if ext != "eml" || !ValidID(id) {
				continue
			}
			env, err := readEnv(root, dir, id)
			if err != nil {
				continue // removed meanwhile, or corrupt (recovery handles it)
			}
			s := summarize(env, dir == dirHold)
			if f.match(&s) {
				out = append(out, s)
			}
		}
	}
	slices.SortFunc(out, func(a, b Summary) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func readEnv(root *os.Root, dir, id string) (*Envelope, error) {
	env, _, err := readEnvelope(root, dir, id)
	return env, err
}

// Show reads one message from disk.
func (c *Client) Show(id string) (Summary, error) {
	if !ValidID(id) {
		return Summary{}, ErrNotFound
	}
	root, err := c.openRoot()
	if err != nil {
		return Summary{}, err
	}
	defer root.Close()
	for _, dir := range []string{dirReady, dirHold} {
		env, err := readEnv(root, dir, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Summary{}, fmt.Errorf("%s: %w", id, err)
		}
		return summarize(env, dir == dirHold), nil
	}
	return Summary{}, ErrNotFound
}

// RetryNow makes the message's pending recipients due now.
func (c *Client) RetryNow(id string) error {
	_, err := c.do(ctlRequest{Op: "retry", ID: id})
	return err
}

// RetryDomain makes every pending recipient in domain due now and returns
// how many messages were touched.
func (c *Client) RetryDomain(domain string) (int, error) {
	return c.do(ctlRequest{Op: "retry-domain", Domain: domain})
}

// Delete removes a message without a DSN.
func (c *Client) Delete(id string) error {
	_, err := c.do(ctlRequest{Op: "delete", ID: id})
	return err
}

// Hold puts a message on hold.
func (c *Client) Hold(id string) error { _, err := c.do(ctlRequest{Op: "hold", ID: id}); return err }

// Release returns a held message to delivery.
func (c *Client) Release(id string) error {
	_, err := c.do(ctlRequest{Op: "release", ID: id})
	return err
}

// enqueueControlFile queues the message a Client left in control/.
func (q *Queue) enqueueControlFile(r ctlRequest) (string, error) {
	if r.Env == nil || !ValidID(r.ID) {
		return "", errors.New("enqueue: missing envelope or body")
	}
	name := dirControl + "/" + r.ID + ".eml"
	f, err := q.root.Open(name)
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	defer q.root.Remove(name)
	defer f.Close()
	return q.Enqueue(r.Env, f)
}

// Enqueue queues a message from another process (a quarantine release by
// `moat quarantine release`): through the running daemon, or directly into
// the spool when none runs (delivered at its next start). It returns once
// the message is durable in the spool.
func (c *Client) Enqueue(env *Envelope, body io.Reader) (string, error) {
	root, err := c.openRoot()
	if err != nil {
		return "", err
	}
	id := newID(time.Now())
	name := dirControl + "/" + id + ".eml"
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err == nil {
		_, err = io.Copy(f, body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	root.Close()
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	resp, err := c.send(ctlRequest{Op: "enqueue", ID: id, Env: env})
	if err == nil {
		_, err = resp.result()
	}
	if err != nil {
		if r, rerr := c.openRoot(); rerr == nil {
			r.Remove(name)
			r.Close()
		}
		return "", err
	}
	return resp.QueueID, nil
}

// do performs req (see send) and returns its count.
func (c *Client) do(req ctlRequest) (int, error) {
	resp, err := c.send(req)
	if err != nil {
		return 0, err
	}
	return resp.result()
}

// send performs req: directly when no daemon holds the spool lock,
// otherwise through the daemon, and returns the answer.
func (c *Client) send(req ctlRequest) (ctlResponse, error) {
	if req.Op != "retry-domain" && !ValidID(req.ID) {
		return ctlResponse{}, ErrNotFound
	}
	root, err := c.openRoot()
	if err != nil {
		return ctlResponse{}, err
	}
	defer root.Close()
	lock, err := tryLock(root)
	if err != nil {
		return ctlResponse{}, err
	}
	if lock != nil {
		return c.direct(root, lock, req)
	}
	reqID := newID(time.Now())
	reqName := dirControl + "/" + reqID + ".req"
	respName := dirControl + "/" + reqID + ".resp"
	b, _ := json.Marshal(req)
	if err := writeAtomic(root, reqName, b); err != nil {
		return ctlResponse{}, fmt.Errorf("writing control request: %w", err)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		if b, err := root.ReadFile(respName); err == nil {
			root.Remove(respName)
			var resp ctlResponse
			if err := json.Unmarshal(b, &resp); err != nil {
				return ctlResponse{}, fmt.Errorf("bad answer from the daemon: %w", err)
			}
			return resp, nil
		}
		// The daemon may have stopped: then do it ourselves.
		if lock, err := tryLock(root); err == nil && lock != nil {
			if root.Remove(reqName) == nil {
				return c.direct(root, lock, req)
			}
			lock.Close() // it was taken: the answer is coming
		}
		if time.Now().After(deadline) {
			if root.Remove(reqName) == nil {
				return ctlResponse{}, errors.New("the daemon holding the spool lock did not answer")
			}
			deadline = time.Now().Add(timeout) // being processed now
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r ctlResponse) result() (int, error) {
	switch {
	case r.OK:
		return r.Count, nil
	case r.NotFound:
		return 0, ErrNotFound
	default:
		return 0, errors.New(r.Error)
	}
}

// direct performs req on the spool while holding its lock.
func (c *Client) direct(root *os.Root, lock *os.File, req ctlRequest) (ctlResponse, error) {
	cfg := DefaultConfig()
	cfg.SpoolDir = c.dir
	// openLocked takes over root and lock; Close releases both, so give
	// it its own handle to the root.
	own, err := os.OpenRoot(c.dir)
	if err != nil {
		lock.Close()
		return ctlResponse{}, err
	}
	q, err := openLocked(cfg, nil, c.Log, nil, own, lock)
	if err != nil {
		lock.Close()
		own.Close()
		return ctlResponse{}, err
	}
	defer q.Close()
	return q.exec(req), nil
}
