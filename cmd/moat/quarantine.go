package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	_ "modernc.org/sqlite"

	"moat.dev/moat/internal/check/bayes"
	"moat.dev/moat/internal/check/clamav"
	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/store/sqlstore"
	"moat.dev/moat/internal/users"
	"moat.dev/moat/internal/verdict"
)

const quarantineUsage = `usage: moat quarantine [--db PATH] [--dir DIR] COMMAND
commands:
  list [--rcpt R] [--domain D] [--search S] [--state held|released|deleted|expired|all] [--limit N] [--json]
  show ID [--raw]           the entry, its reasons and history (--raw: the message bytes)
  release ID [--teach]      re-deliver through the queue (ID of one entry, or of a message: all its recipients)
  delete ID                 discard (entry or message ID)
  spam ID                   report spam: teach the classifier it is spam, then discard
  user add NAME --role site_admin|partner_admin|domain_admin|user [--partner P] [--domain D,...] [--address A,...]
                            (password read from stdin)
  user list | user passwd NAME | user del NAME
  partner NAME DOMAIN,...   set the domains of a partner
  thresholds ADDR [--tag N] [--quarantine N] [--reject N] [--clear]
                            show or set a recipient's own spam thresholds
                            (others stay; one never set is the domain's)
`

// cmdQuarantine inspects and steers the quarantine. Release needs the
// delivery queue; until the lead wires --config, it is refused here.
func cmdQuarantine(args []string) int {
	fs := flag.NewFlagSet("quarantine", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "Moat configuration (store, quarantine directory, spool, clamd)")
	dbPath := fs.String("db", "", "SQLite database (without --config)")
	dir := fs.String("dir", quarantine.DefaultConfig().Dir, "quarantine directory (without --config)")
	fs.Usage = func() { fmt.Fprint(os.Stderr, quarantineUsage) }
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	ctx := context.Background()
	qcfg := quarantine.DefaultConfig()
	deps := quarantine.Deps{}
	var db *sql.DB
	driver := "sqlite"
	bayesCfg := bayes.DefaultConfig()
	switch {
	case *cfgPath != "":
		cfg, ok := loadConfig(*cfgPath)
		if !ok {
			return 2
		}
		st, err := sqlstore.Open(ctx, cfg.Store.Driver, cfg.Store.DSN)
		if err != nil {
			fmt.Fprintln(os.Stderr, "moat quarantine:", err)
			return 1
		}
		defer st.Close()
		db, driver = st.DB(), st.Driver()
		qcfg = cfg.Quarantine
		bayesCfg = cfg.Checks.Bayes
		// A release goes through the spool (the running daemon, or the
		// next start), after a fresh virus scan.
		deps.Enqueuer = queue.NewClient(cfg.Queue.SpoolDir)
		// Only a release scans: other commands would just warn that
		// clamd is down.
		if fs.Arg(0) == "release" {
			if cl, err := scannerFromConfig(cfg); err == nil {
				defer cl.Close()
				deps.Scanner = clamAdapter{cl}
			}
		}
		if err := users.MigrateDriver(ctx, db, driver); err != nil {
			fmt.Fprintln(os.Stderr, "moat quarantine:", err)
			return 1
		}
	case *dbPath != "":
		// Without --config, an existing database and directory only: a
		// mistyped path must not show an empty quarantine (nor create
		// files there).
		for _, f := range []struct{ flag, path string }{{"--db", *dbPath}, {"--dir", *dir}} {
			if _, err := os.Stat(f.path); err != nil {
				fmt.Fprintf(os.Stderr, "moat quarantine: %s %s: %v (give --config FILE, or the paths moat serve uses)\n", f.flag, f.path, errors.Unwrap(err))
				return 2
			}
		}
		var err error
		db, err = sql.Open("sqlite", *dbPath)
		if err != nil {
			fmt.Fprintf(os.Stderr, "moat quarantine: --db %s: %v\n", *dbPath, err)
			return 1
		}
		defer db.Close()
		db.SetMaxOpenConns(1)
		for _, p := range []string{"PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000"} {
			if _, err := db.ExecContext(ctx, p); err != nil {
				fmt.Fprintf(os.Stderr, "moat quarantine: --db %s: %v\n", *dbPath, err)
				return 1
			}
		}
		qcfg.Dir = *dir
	default:
		fmt.Fprintln(os.Stderr, "moat quarantine: give --config FILE (or --db and --dir)")
		return 2
	}
	deps.DB, deps.Driver = db, driver
	// release --teach and report-spam teach the same classifier as serve
	// (the bayes check's tokens in the same database).
	lr, err := newCLILearner(ctx, db, driver, bayesCfg.Classifier)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat quarantine:", err)
		return 1
	}
	deps.Learner = lr
	q, err := quarantine.New(qcfg, deps)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat quarantine:", err)
		return 1
	}
	defer q.Close()
	return runQuarantine(ctx, q, db, driver, fs.Args(), os.Stdin, os.Stdout, os.Stderr)
}

// cliLearner teaches the classifier from the CLI's corrections, the way
// internal/app's learner does for the web UI.
type cliLearner struct{ c *classify.Classifier }

func newCLILearner(ctx context.Context, db *sql.DB, driver string, cfg classify.Config) (cliLearner, error) {
	if err := classify.MigrateDriver(ctx, db, driver); err != nil {
		return cliLearner{}, fmt.Errorf("classifier tables: %w", err)
	}
	c, err := classify.New(cfg, classify.NewSQLStoreWith(db, classify.SQLStoreOptions{Driver: driver}))
	if err != nil {
		return cliLearner{}, err
	}
	return cliLearner{c}, nil
}

func (l cliLearner) Learn(ctx context.Context, raw []byte, spam bool, user string) error {
	lab := classify.Ham
	if spam {
		lab = classify.Spam
	}
	_, err := l.c.Correct(ctx, user, message.ParseBytes(raw, message.DefaultLimits()), lab)
	return err
}

func (l cliLearner) Score(ctx context.Context, raw []byte, user string) (float64, error) {
	r, err := l.c.Classify(ctx, user, message.ParseBytes(raw, message.DefaultLimits()), false)
	return r.Prob, err
}

// clamAdapter lets the CLI's release scan again.
type clamAdapter struct{ c *clamav.Check }

func (a clamAdapter) Scan(ctx context.Context, r io.Reader) (bool, string, error) {
	res, err := a.c.Scan(ctx, r)
	if err != nil {
		return false, "", err
	}
	return res.Status == clamav.Infected, res.Signature, nil
}

// runQuarantine is the CLI on an open Store (tests call it directly).
func runQuarantine(ctx context.Context, q *quarantine.Store, db *sql.DB, driver string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, "moat quarantine:", err)
		return 1
	}
	switch args[0] {
	case "list":
		fs := flag.NewFlagSet("list", flag.ContinueOnError)
		fs.SetOutput(stderr)
		rcpt := fs.String("rcpt", "", "recipient")
		domain := fs.String("domain", "", "domain")
		search := fs.String("search", "", "text in subject or sender")
		state := fs.String("state", "", "held (default), released, deleted, expired or all")
		limit := fs.Int("limit", 100, "at most this many")
		asJSON := fs.Bool("json", false, "JSON output")
		if err := fs.Parse(reorder(args[1:])); err != nil {
			return parseExit(err)
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "moat quarantine list: unexpected argument %q (filter with --rcpt, --domain or --search)\n", fs.Arg(0))
			return 2
		}
		switch quarantine.State(*state) {
		case "", quarantine.Held, quarantine.Released, quarantine.Deleted, quarantine.Expired, "all":
		default:
			fmt.Fprintf(stderr, "moat quarantine list: --state %q is not one of held, released, deleted, expired, all\n", *state)
			return 2
		}
		if *limit < 1 || *limit > 1000 {
			fmt.Fprintf(stderr, "moat quarantine list: --limit %d: must be 1-1000\n", *limit)
			return 2
		}
		es, total, err := q.List(ctx, quarantine.Filter{Rcpt: *rcpt, Domain: *domain, Search: *search, State: quarantine.State(*state), Limit: *limit})
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			if es == nil {
				es = []*quarantine.Entry{}
			}
			if err := printJSON(stdout, es); err != nil {
				return fail(err)
			}
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tRECEIVED\tSCORE\tSTATE\tRCPT\tFROM\tSUBJECT")
		for _, e := range es {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Received.Format(time.DateTime), verdict.FormatScore(e.Score), e.State,
				e.Rcpt, oneLine(e.From, 40), oneLine(e.Subject, 60))
		}
		tw.Flush()
		fmt.Fprintf(stdout, "%d of %d shown\n", len(es), total)
		return 0
	case "show":
		fs := flag.NewFlagSet("show", flag.ContinueOnError)
		fs.SetOutput(stderr)
		raw := fs.Bool("raw", false, "print the message bytes")
		if err := fs.Parse(reorder(args[1:])); err != nil || fs.NArg() != 1 {
			fmt.Fprintln(stderr, "usage: moat quarantine show ID [--raw]")
			return 2
		}
		e, err := q.Get(ctx, fs.Arg(0))
		if err != nil {
			return fail(err)
		}
		if *raw {
			rc, err := q.Open(ctx, e.ID)
			if err != nil {
				return fail(err)
			}
			defer rc.Close()
			io.Copy(stdout, rc)
			return 0
		}
		fmt.Fprintf(stdout, "ID:        %s\nMessage:   %s\nState:     %s (by %s, %s)\nReceived:  %s from %s (%s)\nFrom:      %s\nHeader:    %s\nTo:        %s (all: %s)\nSubject:   %s\nSize:      %d\nScore:     %s\nAction:    %s\nRefused:   %v\nExpires:   %s\nReasons:\n",
			e.ID, e.MsgID, e.State, e.StateBy, e.StateAt.Format(time.DateTime), e.Received.Format(time.DateTime), e.Client.IP, e.Client.Helo,
			e.From, e.HeaderFrom, e.Rcpt, strings.Join(e.Rcpts, ", "), e.Subject, e.Size, verdict.FormatScore(e.Score), e.Action, e.Refused, e.Expires.Format(time.DateTime))
		for _, r := range e.Reasons {
			fmt.Fprintf(stdout, "  %-24s %6s  %s\n", r.Name, verdict.FormatScore(r.Score), r.Detail)
		}
		au, _ := q.Audit(ctx, e.ID)
		fmt.Fprintln(stdout, "History:")
		for _, a := range au {
			fmt.Fprintf(stdout, "  %s  %-16s %-20s %s\n", a.At.Format(time.DateTime), a.Action, a.By, a.Detail)
		}
		return 0
	case "release", "delete", "spam":
		fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
		fs.SetOutput(stderr)
		teach := fs.Bool("teach", false, "teach the classifier it is ham")
		if err := fs.Parse(reorder(args[1:])); err != nil || fs.NArg() != 1 {
			fmt.Fprintf(stderr, "usage: moat quarantine %s ID\n", args[0])
			return 2
		}
		ids, err := entryIDs(ctx, q, fs.Arg(0))
		if err != nil {
			return fail(err)
		}
		by := "cli:" + os.Getenv("USER")
		rc := 0
		for _, id := range ids {
			switch args[0] {
			case "delete":
				err = q.Delete(ctx, id, by)
				if err == nil {
					fmt.Fprintf(stdout, "%s deleted\n", id)
				}
			case "spam":
				err = q.ReportSpam(ctx, id, by)
				if err == nil {
					fmt.Fprintf(stdout, "%s reported as spam\n", id)
				}
			default:
				var qid string
				qid, err = q.Release(ctx, id, quarantine.ReleaseOptions{By: by, Teach: *teach})
				if err == nil {
					fmt.Fprintf(stdout, "%s released (queue id %s)\n", id, qid)
				}
			}
			if err != nil {
				fmt.Fprintf(stderr, "moat quarantine: %s: %v\n", id, err)
				rc = 1
			}
		}
		return rc
	case "user", "partner":
		return runUsers(ctx, db, driver, args, stdin, stdout, stderr)
	case "thresholds":
		return runThresholds(ctx, q.Prefs, args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, quarantineUsage)
	return 2
}

// entryIDs resolves an entry ID, or a message ID to all its entries.
func entryIDs(ctx context.Context, q *quarantine.Store, id string) ([]string, error) {
	if e, err := q.Get(ctx, id); err == nil {
		return []string{e.ID}, nil
	} else if !errors.Is(err, quarantine.ErrNotFound) {
		return nil, err
	}
	es, err := q.EntriesOf(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(es) == 0 {
		return nil, quarantine.ErrNotFound
	}
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out, nil
}

// reorder puts flags (with their values) before positional arguments so
// "show ID --raw" and "user add NAME --role R" work.
func reorder(args []string) []string {
	boolFlag := map[string]bool{"teach": true, "raw": true, "json": true, "clear": true}
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && !boolFlag[name] && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return append(flags, pos...)
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func runUsers(ctx context.Context, db *sql.DB, driver string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if err := users.MigrateDriver(ctx, db, driver); err != nil {
		fmt.Fprintln(stderr, "moat quarantine:", err)
		return 1
	}
	us := users.NewDriver(db, driver)
	fail := func(err error) int {
		fmt.Fprintln(stderr, "moat quarantine:", err)
		return 1
	}
	readPW := func() (string, error) {
		b, err := io.ReadAll(io.LimitReader(stdin, 4096))
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if args[0] == "partner" {
		if len(args) != 3 {
			fmt.Fprintln(stderr, "usage: moat quarantine partner NAME DOMAIN,...")
			return 2
		}
		if args[1] == "" || strings.ContainsFunc(args[1], func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			fmt.Fprintf(stderr, "moat quarantine partner: %q is not a partner name (no spaces)\n", args[1])
			return 2
		}
		for _, d := range splitList(args[2]) {
			if _, ok := normDomain(d); !ok {
				fmt.Fprintf(stderr, "moat quarantine partner: %q is not a valid domain name\n", d)
				return 2
			}
		}
		if err := us.SetPartnerDomains(ctx, args[1], splitList(args[2])); err != nil {
			return fail(err)
		}
		return 0
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, quarantineUsage)
		return 2
	}
	switch args[1] {
	case "add":
		fs := flag.NewFlagSet("user add", flag.ContinueOnError)
		fs.SetOutput(stderr)
		role := fs.String("role", "user", "site_admin, partner_admin, domain_admin or user")
		partner := fs.String("partner", "", "partner (partner_admin)")
		domains := fs.String("domain", "", "comma-separated domains (domain_admin)")
		addrs := fs.String("address", "", "comma-separated addresses (user)")
		if err := fs.Parse(reorder(args[2:])); err != nil || fs.NArg() != 1 {
			fmt.Fprintln(stderr, "usage: moat quarantine user add NAME --role ROLE [...] < password")
			return 2
		}
		// The scope is checked before the password is read: a
		// domain_admin of no domain, a user of no address or a
		// misspelled domain would otherwise be created silently.
		if err := checkUserScope(fs.Arg(0), *role, *partner, splitList(*domains), splitList(*addrs)); err != nil {
			fmt.Fprintln(stderr, "moat quarantine user add:", err)
			return 2
		}
		pw, err := readPW()
		if err != nil {
			return fail(err)
		}
		u := &users.User{Name: fs.Arg(0), Role: users.Role(*role), Partner: *partner, Domains: splitList(*domains), Addresses: splitList(*addrs)}
		if err := us.Create(ctx, u, pw); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "user %s created\n", u.Name)
		return 0
	case "list":
		list, err := us.List(ctx)
		if err != nil {
			return fail(err)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tSCOPE")
		for _, u := range list {
			scope := u.Partner + strings.Join(u.Domains, ",") + strings.Join(u.Addresses, ",")
			if u.Disabled {
				scope += " (disabled)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Name, u.Role, scope)
		}
		tw.Flush()
		return 0
	case "passwd":
		if len(args) != 3 {
			fmt.Fprintln(stderr, "usage: moat quarantine user passwd NAME < password")
			return 2
		}
		pw, err := readPW()
		if err != nil {
			return fail(err)
		}
		if err := us.SetPassword(ctx, args[2], pw); err != nil {
			return fail(userErr(args[2], err))
		}
		return 0
	case "del":
		if len(args) != 3 {
			fmt.Fprintln(stderr, "usage: moat quarantine user del NAME")
			return 2
		}
		if err := us.Delete(ctx, args[2]); err != nil {
			return fail(userErr(args[2], err))
		}
		return 0
	}
	fmt.Fprint(stderr, quarantineUsage)
	return 2
}

// userErr names the user of a not-found error.
func userErr(name string, err error) error {
	if errors.Is(err, users.ErrNotFound) {
		return fmt.Errorf("user %q: no such user", name)
	}
	return err
}

// checkUserScope refuses a user whose name or scope cannot work: the
// scope flags must fit the role (the store keeps whatever it is given).
func checkUserScope(name, role, partner string, domains, addrs []string) error {
	if strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f }) || len(name) > 254 {
		return fmt.Errorf("%q is not a user name (no spaces or control characters, at most 254 bytes)", name)
	}
	for _, d := range domains {
		if _, ok := normDomain(d); !ok {
			return fmt.Errorf("--domain: %q is not a valid domain name", d)
		}
	}
	for _, a := range addrs {
		if !validAddress(a) {
			return fmt.Errorf("--address: %q is not an address (local@domain)", a)
		}
	}
	switch users.Role(role) {
	case users.PartnerAdmin:
		if partner == "" {
			return errors.New("--role partner_admin needs --partner P")
		}
	case users.DomainAdmin:
		if len(domains) == 0 {
			return errors.New("--role domain_admin needs --domain D,...")
		}
	case users.EndUser:
		if len(addrs) == 0 {
			return errors.New("--role user needs --address A,...")
		}
	}
	for _, f := range []struct {
		flag, role string
		given      bool
	}{{"--partner", string(users.PartnerAdmin), partner != ""}, {"--domain", string(users.DomainAdmin), len(domains) > 0}, {"--address", string(users.EndUser), len(addrs) > 0}} {
		if f.given && role != f.role && users.Role(role).Valid() {
			return fmt.Errorf("%s is for --role %s, not %s", f.flag, f.role, role)
		}
	}
	return nil
}

// runThresholds shows or sets one recipient's own spam thresholds.
func runThresholds(ctx context.Context, p *quarantine.Prefs, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("thresholds", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var set policy.Thresholds
	num := func(name string, dst **float64) {
		fs.Func(name, name+" score (a number)", func(v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return fmt.Errorf("%q is not a number", v)
			}
			*dst = &f
			return nil
		})
	}
	num("tag", &set.Tag)
	num("quarantine", &set.Quarantine)
	num("reject", &set.Reject)
	clear := fs.Bool("clear", false, "remove the recipient's thresholds (back to the domain's)")
	if err := fs.Parse(reorder(args)); err != nil || fs.NArg() != 1 || !strings.Contains(fs.Arg(0), "@") {
		if err == nil && fs.NArg() == 1 {
			fmt.Fprintf(stderr, "moat quarantine thresholds: %q is not an address\n", fs.Arg(0))
		} else if err == nil && fs.NArg() > 1 {
			fmt.Fprintf(stderr, "moat quarantine thresholds: unexpected argument %q (one address at a time)\n", fs.Arg(1))
		}
		fmt.Fprintln(stderr, "usage: moat quarantine thresholds ADDR [--tag N] [--quarantine N] [--reject N] [--clear]")
		return 2
	}
	rcpt := fs.Arg(0)
	if *clear || !set.IsZero() {
		if *clear && !set.IsZero() {
			fmt.Fprintln(stderr, "moat quarantine thresholds: --clear takes no thresholds")
			return 2
		}
		if !*clear { // the thresholds not given stay as they are
			cur, err := p.Thresholds(ctx, rcpt)
			if err != nil {
				fmt.Fprintln(stderr, "moat quarantine thresholds:", err)
				return 1
			}
			for _, x := range []struct{ dst, v **float64 }{{&set.Tag, &cur.Tag}, {&set.Quarantine, &cur.Quarantine}, {&set.Reject, &cur.Reject}} {
				if *x.dst == nil {
					*x.dst = *x.v
				}
			}
		}
		if err := p.SetThresholds(ctx, rcpt, set, "cli:"+os.Getenv("USER")); err != nil {
			fmt.Fprintln(stderr, "moat quarantine thresholds:", err)
			return 2
		}
	}
	t, err := p.Thresholds(ctx, rcpt)
	if err != nil {
		fmt.Fprintln(stderr, "moat quarantine thresholds:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s %s\n", strings.ToLower(rcpt), t)
	return 0
}
