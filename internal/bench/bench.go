// Package bench measures Moat end to end the way the issue tracker asks:
// Postfix's smtp-source drives N messages (one per connection) with 1, 20
// and 100 parallel sessions, first straight into Postfix's smtp-sink (the
// ceiling: what the load generator and the loopback can do at all), then
// through a `moat serve` process into a sink backend, in the same run.
// Reported: messages/s accepted and delivered, p50/p99 DATA-to-250 latency
// (from Moat's own histogram), and Moat's peak RSS.
package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"moat.dev/moat/internal/sink"
)

// Options for Run.
type Options struct {
	Moat     string   // path of the moat binary
	Messages int      // per run
	Size     int      // message size in bytes (smtp-source -l)
	Senders  []int    // parallel sessions per run
	Profiles []string // moat configurations to measure: "core", "full", ...
	// ProfileConfig returns the YAML fragment (checks, policy, dns) for a
	// profile; the harness adds listeners, data dir and the domain.
	ProfileConfig func(profile string, env *Env) (string, error)
	Log           io.Writer
	// Runs is how often each moat configuration is measured; the row
	// reported is the median by end-to-end rate (default 1).
	Runs int
	// LogLevel is moat's log level during the run (default "info": the
	// one line per transaction production writes is part of the cost).
	LogLevel string
	// Clamd is the address of a running clamd for the full profile
	// ("unix:/path" or "tcp:host:port"); empty starts one.
	Clamd string
	// Message is a file smtp-source sends as every message (-F) instead
	// of its generated filler of Size bytes, e.g. a real mail, so that
	// the content checks see realistic text.
	Message string
	// Train is a labelled corpus (a .tar.gz with ham/ and spam/ members,
	// or a directory) the full profile's classifier learns before its
	// runs (once; every run starts from a copy of that model), so that
	// the classifier scores with a real model instead of staying silent.
	Train string
}

// Env is what a profile's config can refer to.
type Env struct {
	Dir      string
	DNSAddr  string // a loopback DNS server answering for the benchmark zones
	Backend  string // the sink's address
	Resolver string
	Clamd    string // clamd address for the full profile, "" if none

	trained string // the database with the model learned from Options.Train
}

// trainedModel learns Options.Train once into a database of its own, with
// the full profile's configuration (cfg, whose data_dir line it replaces).
func (e *Env) trainedModel(ctx context.Context, o Options, cfg string) error {
	if e.trained != "" {
		return nil
	}
	data := filepath.Join(e.Dir, "trained", "data")
	if err := os.MkdirAll(data, 0o750); err != nil {
		return err
	}
	lines := strings.SplitN(cfg, "\n", 3)
	if len(lines) < 3 || !strings.HasPrefix(lines[1], "data_dir: ") {
		return errors.New("bench: unexpected config layout")
	}
	lines[1] = "data_dir: " + data
	cfgPath := filepath.Join(e.Dir, "trained", "moat.yaml")
	if err := os.WriteFile(cfgPath, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		return err
	}
	start := time.Now()
	out, err := exec.CommandContext(ctx, o.Moat, "learn", "--config", cfgPath, "--label-from-path", o.Train, "-q").CombinedOutput()
	if err != nil {
		return fmt.Errorf("bench: training the full profile's model: %v: %s", err, tail(string(out), 2000))
	}
	if o.Log != nil {
		fmt.Fprintf(o.Log, "trained the full profile's model from %s in %v: %s\n", o.Train, time.Since(start).Round(time.Millisecond), strings.TrimSpace(tail(string(out), 300)))
	}
	e.trained = filepath.Join(data, "moat.db")
	return nil
}

// copyFile copies an SQLite database (and its WAL, if one was left) to dst.
func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return err
	}
	for _, ext := range []string{"", "-wal"} {
		b, err := os.ReadFile(src + ext)
		if ext != "" && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst+ext, b, 0o640); err != nil {
			return err
		}
	}
	return nil
}

// Row is one measured configuration.
type Row struct {
	Target     string // "smtp-sink (ceiling)", "moat core", ...
	Senders    int
	Messages   int
	AcceptRate float64 // msgs/s from the first connection to smtp-source's exit
	E2ERate    float64 // msgs/s until the backend had every message (0 for the ceiling)
	P50, P99   time.Duration
	PeakRSS    int64   // bytes, 0 if unknown
	CPUPerMsg  float64 // moat's CPU time (user+system) per message, ms
	Runs       []float64
	Errors     string
}

func tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (Debian package postfix)", name)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitListenOr is waitListen that gives up when stop is closed (a nil stop
// never is).
func waitListenOr(addr string, d time.Duration, stop <-chan struct{}) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case <-stop:
			return fmt.Errorf("moat exited before listening on %s", addr)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after %v", addr, d)
}

// waitListen waits until something accepts TCP connections on addr.
func waitListen(addr string, d time.Duration) error { return waitListenOr(addr, d, nil) }

// source runs smtp-source and returns its wall time.
func source(ctx context.Context, senders, msgs, size int, file, addr, rcpt string) (time.Duration, error) {
	bin, err := tool("smtp-source")
	if err != nil {
		return 0, err
	}
	args := []string{"-s", strconv.Itoa(senders), "-m", strconv.Itoa(msgs)}
	if file != "" {
		args = append(args, "-F", file)
	} else {
		args = append(args, "-l", strconv.Itoa(size))
	}
	args = append(args, "-M", "bench-client.example", "-f", "bench@sender.example", "-t", rcpt, addr)
	cmd := exec.CommandContext(ctx, bin, args...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	el := time.Since(start)
	if err != nil {
		return el, fmt.Errorf("smtp-source: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return el, fmt.Errorf("smtp-source reported: %s", firstLine(s))
	}
	return el, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Ceiling measures smtp-source straight into smtp-sink.
func Ceiling(ctx context.Context, senders, msgs, size int, file string) (Row, error) {
	row := Row{Target: "smtp-sink (ceiling)", Senders: senders, Messages: msgs}
	bin, err := tool("smtp-sink")
	if err != nil {
		return row, err
	}
	addr, err := freeAddr()
	if err != nil {
		return row, err
	}
	args := []string{"-m", "1000", addr, "1024"}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...) // smtp-sink refuses to run as root
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	if err := cmd.Start(); err != nil {
		return row, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := waitListen(addr, 10*time.Second); err != nil {
		return row, err
	}
	el, err := source(ctx, senders, msgs, size, file, addr, "user@bench.example")
	if err != nil {
		row.Errors = err.Error()
	}
	row.AcceptRate = float64(msgs) / el.Seconds()
	if pid := cmd.Process.Pid; pid > 0 {
		row.PeakRSS = peakRSS(pid)
	}
	return row, nil
}

// Moat measures one profile through a fresh moat serve process.
func Moat(ctx context.Context, o Options, profile string, senders int, env *Env) (Row, error) {
	row := Row{Target: "moat " + profile, Senders: senders, Messages: o.Messages}
	dir, err := os.MkdirTemp(env.Dir, profile+"-")
	if err != nil {
		return row, err
	}
	smtpAddr, err := freeAddr()
	if err != nil {
		return row, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return row, err
	}
	frag := ""
	if o.ProfileConfig != nil {
		if frag, err = o.ProfileConfig(profile, env); err != nil {
			return row, err
		}
	}
	level := o.LogLevel
	if level == "" {
		level = "info"
	}
	cfg := fmt.Sprintf(`hostname: moat.bench.example
data_dir: %s
log:
  level: %s
http:
  listen: %s
  pprof: true
web:
  listen: ""
smtp:
  listen: [%q]
  max_connections_per_ip: 1000
  conn_rate_per_ip: 0
domains:
  - name: bench.example
    backends: [%q]
    recipients:
      mode: any
%s`, filepath.Join(dir, "data"), level, httpAddr, smtpAddr, env.Backend, frag)
	cfgPath := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return row, err
	}
	if profile == "full" && o.Train != "" {
		if err := env.trainedModel(ctx, o, cfg); err != nil {
			return row, err
		}
		if err := copyFile(env.trained, filepath.Join(dir, "data", "moat.db")); err != nil {
			return row, err
		}
	}
	logf, err := os.Create(filepath.Join(dir, "moat.log"))
	if err != nil {
		return row, err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, o.Moat, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return row, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	if err := waitListenOr(smtpAddr, 60*time.Second, exited); err != nil {
		b, _ := os.ReadFile(logf.Name())
		return row, fmt.Errorf("%v; moat log:\n%s", err, tail(string(b), 2000))
	}
	return measure(ctx, o, row, senders, smtpAddr, httpAddr, cmd, exited, env)
}

// counter is what the benchmark needs of the backend.
type counter interface{ Count() int }

var backendCounter counter

func measure(ctx context.Context, o Options, row Row, senders int, smtpAddr, httpAddr string, cmd *exec.Cmd, exited <-chan struct{}, env *Env) (Row, error) {
	base := backendCounter.Count()
	cpu0 := cpuTime(cmd.Process.Pid)
	start := time.Now()
	el, err := source(ctx, senders, o.Messages, o.Size, o.Message, smtpAddr, "user@bench.example")
	if err != nil {
		row.Errors = err.Error()
	}
	row.AcceptRate = float64(o.Messages) / el.Seconds()
	deadline := time.Now().Add(time.Duration(o.Messages)*20*time.Millisecond + 30*time.Second)
	for backendCounter.Count()-base < o.Messages && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := backendCounter.Count() - base
	e2e := time.Since(start)
	row.E2ERate = float64(got) / e2e.Seconds()
	if got < o.Messages {
		row.Errors = strings.TrimSpace(row.Errors + fmt.Sprintf(" delivered %d of %d", got, o.Messages))
	}
	row.CPUPerMsg = float64(cpuTime(cmd.Process.Pid)-cpu0) / float64(time.Millisecond) / float64(o.Messages)
	row.P50, row.P99 = latency(httpAddr)
	row.PeakRSS = peakRSS(cmd.Process.Pid)
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	return row, nil
}

// cpuTime reads the user+system CPU time a process used so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may contain spaces; count after ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // utime: field 14 overall
	st, _ := strconv.ParseInt(f[12], 10, 64) // stime: field 15
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

// peakRSS reads VmHWM of a process.
func peakRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// latency reads moat_smtpd_data_seconds from /metrics and interpolates
// p50 and p99 from its buckets.
func latency(httpAddr string) (p50, p99 time.Duration) {
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	type bucket struct {
		le float64
		n  float64
	}
	agg := map[float64]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "moat_smtpd_data_seconds_bucket{") {
			continue
		}
		i := strings.Index(line, `le="`)
		if i < 0 {
			continue
		}
		rest := line[i+4:]
		j := strings.IndexByte(rest, '"')
		le, err := strconv.ParseFloat(rest[:j], 64)
		if err != nil && rest[:j] == "+Inf" {
			le = math.Inf(1)
		}
		fields := strings.Fields(line)
		n, _ := strconv.ParseFloat(fields[len(fields)-1], 64)
		agg[le] += n
	}
	var bs []bucket
	for le, n := range agg {
		bs = append(bs, bucket{le, n})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return 0, 0
	}
	total := bs[len(bs)-1].n
	q := func(p float64) time.Duration {
		target := p * total
		prevLe, prevN := 0.0, 0.0
		for _, b := range bs {
			if b.n >= target {
				if math.IsInf(b.le, 1) {
					return time.Duration(prevLe * float64(time.Second))
				}
				frac := 0.0
				if b.n > prevN {
					frac = (target - prevN) / (b.n - prevN)
				}
				return time.Duration((prevLe + frac*(b.le-prevLe)) * float64(time.Second))
			}
			prevLe, prevN = b.le, b.n
		}
		return 0
	}
	return q(0.5), q(0.99)
}

// Run measures the ceiling and every profile for each sender count.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if o.Messages <= 0 || o.Size <= 0 || len(o.Senders) == 0 {
		return nil, errors.New("bench: messages, size and senders must be positive")
	}
	dir, err := os.MkdirTemp("", "moat-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	backend, err := sink.Start(sink.Config{NoStore: true, Hostname: "backend.bench.example"})
	if err != nil {
		return nil, err
	}
	defer backend.Close()
	backendCounter = backend
	dnsSrv, err := startDNS()
	if err != nil {
		return nil, err
	}
	defer dnsSrv.close()
	env := &Env{Dir: dir, DNSAddr: dnsSrv.addr, Backend: backend.Addr(), Resolver: dnsSrv.addr, Clamd: o.Clamd}
	if env.Clamd == "" && slices.Contains(o.Profiles, "full") {
		c, err := startClamd()
		if err != nil {
			return nil, fmt.Errorf("full profile: %w", err)
		}
		defer c.Close()
		env.Clamd = c.Unix
		clamdPID = c.PID()
	}
	runs := max(o.Runs, 1)
	logRow := func(r Row) {
		if o.Log != nil {
			fmt.Fprintln(o.Log, r)
		}
	}
	var rows []Row
	for _, s := range o.Senders {
		var ceil []Row
		for range runs {
			r, err := Ceiling(ctx, s, o.Messages, o.Size, o.Message)
			if err != nil {
				return rows, err
			}
			logRow(r)
			ceil = append(ceil, r)
		}
		rows = append(rows, median(ceil, func(r Row) float64 { return r.AcceptRate }))
		for _, p := range o.Profiles {
			var rs []Row
			for range runs {
				r, err := Moat(ctx, o, p, s, env)
				if err != nil {
					return rows, fmt.Errorf("profile %s, %d senders: %w", p, s, err)
				}
				if p == "full" && clamdPID > 0 {
					r.Errors = strings.TrimSpace(r.Errors + fmt.Sprintf(" clamd peak RSS %d MB", peakRSS(clamdPID)>>20))
				}
				logRow(r)
				rs = append(rs, r)
			}
			rows = append(rows, median(rs, func(r Row) float64 { return r.E2ERate }))
		}
	}
	return rows, nil
}

// clamdPID is the clamd the harness started, 0 if none.
var clamdPID int

// median returns the run with the median key, recording every run's key.
func median(rs []Row, key func(Row) float64) Row {
	sorted := slices.Clone(rs)
	sort.SliceStable(sorted, func(i, j int) bool { return key(sorted[i]) < key(sorted[j]) })
	m := sorted[len(sorted)/2]
	m.Runs = nil
	for _, r := range rs {
		m.Runs = append(m.Runs, key(r))
	}
	return m
}

func (r Row) String() string {
	return fmt.Sprintf("%-22s senders=%-3d msgs=%d accept=%.0f/s e2e=%.0f/s p50=%v p99=%v rss=%dMB cpu=%.2fms/msg %s",
		r.Target, r.Senders, r.Messages, r.AcceptRate, r.E2ERate, r.P50.Round(100*time.Microsecond), r.P99.Round(100*time.Microsecond), r.PeakRSS>>20, r.CPUPerMsg, r.Errors)
}

func (r Row) runsNote() string {
	if len(r.Runs) < 2 {
		return ""
	}
	parts := make([]string, len(r.Runs))
	for i, v := range r.Runs {
		parts[i] = fmt.Sprintf("%.0f", v)
	}
	return "runs: " + strings.Join(parts, ", ")
}

// Markdown renders rows as a table.
func Markdown(w io.Writer, rows []Row, o Options) {
	fmt.Fprintf(w, "| target | senders | messages | accepted msg/s | delivered msg/s (end to end) | p50 accept | p99 accept | peak RSS | moat CPU/msg | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		e2e := "—"
		if r.E2ERate > 0 {
			e2e = fmt.Sprintf("%.0f", r.E2ERate)
		}
		lat := func(d time.Duration) string {
			if d == 0 {
				return "—"
			}
			return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
		}
		cpu := "—"
		if r.CPUPerMsg > 0 {
			cpu = fmt.Sprintf("%.2f ms", r.CPUPerMsg)
		}
		notes := strings.TrimSpace(r.runsNote() + " " + r.Errors)
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %s | %s | %s | %d MB | %s | %s |\n", r.Target, r.Senders, r.Messages, r.AcceptRate, e2e, lat(r.P50), lat(r.P99), r.PeakRSS>>20, cpu, notes)
	}
}
