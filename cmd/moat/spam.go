package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"moat.dev/moat/internal/check/bayes"
	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/store/sqlstore"
)

// defaultClassifierDB is where moat learn/classify keep the model when no
// --db is given (the same SQLite file the store uses by default).
const defaultClassifierDB = "/var/lib/moat/moat.db"

func classifierDB() string {
	if v := os.Getenv("MOAT_DB"); v != "" {
		return v
	}
	return defaultClassifierDB
}

func openClassifier(ctx context.Context, path, algorithm string) (*classify.Classifier, func(), error) {
	cfg := classify.DefaultConfig()
	if algorithm != "" {
		cfg.Algorithm = algorithm
	}
	return openClassifierMode(ctx, path, cfg)
}

func cmdLearn(args []string) int {
	fs := flag.NewFlagSet("learn", flag.ContinueOnError)
	spam := fs.String("spam", "", "learn PATH (file, Maildir, mbox, .tar.gz/.tar.bz2) as spam")
	ham := fs.String("ham", "", "learn PATH as ham")
	fromPath := fs.String("label-from-path", "", "learn PATH, labelling by ham/ and spam/ path components")
	mode := fs.String("mode", "everything", "everything | on-error (learn only what the model gets wrong or is unsure of)")
	dbPath := fs.String("db", classifierDB(), "SQLite database holding the model ($MOAT_DB)")
	cfgPath := fs.String("config", "", "use the model and classifier settings of this Moat configuration (instead of --db)")
	user := fs.String("user", "", "learn into this user's personal model instead of the site model")
	alg := fs.String("classifier", "", "stack | logreg | chi2 (default: stack)")
	quiet := fs.Bool("q", false, "print only the summary")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if (*fromPath != "" && (*spam != "" || *ham != "")) || (*fromPath == "" && *spam == "" && *ham == "") || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: moat learn [--spam PATH] [--ham PATH] | --label-from-path PATH [--mode everything|on-error] [--db FILE] [--user ADDR]")
		return 2
	}
	if *mode != "everything" && *mode != "on-error" {
		fmt.Fprintln(os.Stderr, "moat learn: --mode must be everything or on-error")
		return 2
	}
	ctx := context.Background()
	cfg := classify.DefaultConfig()
	var sc storeConfig
	if *cfgPath != "" {
		var ok bool
		if sc, cfg, ok = modelFromConfig("learn", *cfgPath); !ok {
			return 2
		}
	}
	if *alg != "" {
		cfg.Algorithm = *alg
	}
	cfg.TrainMode = *mode
	// Everything that can be refused is refused before the model's
	// database is opened (and created).
	if _, err := classify.New(cfg, classify.NewMemStore()); err != nil {
		fmt.Fprintln(os.Stderr, "moat learn:", err)
		return 2
	}
	for _, p := range []string{*fromPath, *ham, *spam} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintln(os.Stderr, "moat learn:", err)
			return 1
		}
	}
	c, closeDB, err := openModel(ctx, sc, *dbPath, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat learn:", err)
		return 1
	}
	defer closeDB()
	// Sources of ham and spam: with both classes, they are learned
	// interleaved in proportion (as moat eval orders its stream), not one
	// class after the other, which would teach an online learner (and the
	// stack's calibration) a run of one label, then a run of the other.
	var srcs []learnSource
	switch {
	case *fromPath != "":
		srcs = []learnSource{{*fromPath, classify.Ham, true}, {*fromPath, classify.Spam, true}}
	default:
		if *ham != "" {
			srcs = append(srcs, learnSource{*ham, classify.Ham, false})
		}
		if *spam != "" {
			srcs = append(srcs, learnSource{*spam, classify.Spam, false})
		}
	}
	// All lessons through one Learner: learned in order, written in one
	// transaction per classify.DefaultLearnerCommit lessons. Messages are
	// parsed and their features extracted ahead, in parallel (a bounded
	// window); the lessons themselves are learned one after the other, in
	// the order interleave gives, so the model is the one learning them
	// one by one leaves.
	ln := c.NewLearner(0)
	counts := map[classify.LearnOutcome]int{}
	t0 := time.Now()
	total := 0
	out := bufio.NewWriter(os.Stdout)
	err = ln.LearnStream(ctx, classify.StreamOptions{User: *user, Limits: message.DefaultLimits()},
		func(push func(classify.BulkItem) error) error {
			return interleave(ctx, srcs, func(it classify.Item, label classify.Label) error {
				return push(classify.BulkItem{Name: it.Name, Data: it.Data, Label: label})
			})
		},
		func(it classify.BulkItem, o classify.LearnOutcome) error {
			counts[o]++
			total++
			if !*quiet {
				fmt.Fprintf(out, "%s\t%s\t%s\n", it.Name, it.Label, o)
			}
			return nil
		})
	if ferr := out.Flush(); err == nil && ferr != nil {
		err = ferr
	}
	if ferr := ln.Flush(ctx); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat learn:", err)
		return 1
	}
	if total == 0 {
		fmt.Fprintln(os.Stderr, "moat learn: no messages found (an empty folder, or no ham/ or spam/ in the paths)")
		return 1
	}
	t, _ := c.Totals(ctx, *user)
	fmt.Printf("%d messages in %.1fs: %d learned, %d moved, %d already known, %d skipped; model now has %d ham, %d spam\n",
		total, time.Since(t0).Seconds(), counts[classify.Learned], counts[classify.Moved], counts[classify.AlreadyKnown], counts[classify.Skipped], t.Ham, t.Spam)
	return 0
}

// storeConfig is the database of a Moat configuration (driver "" when
// the command's --db is used instead).
type storeConfig struct{ driver, dsn string }

// openModel opens the classifier in the configured store (sqlite or
// postgres, as moat serve does) or, without one, in the SQLite file path.
func openModel(ctx context.Context, sc storeConfig, path string, cfg classify.Config) (*classify.Classifier, func(), error) {
	if sc.driver == "" {
		return openClassifierMode(ctx, path, cfg)
	}
	st, err := sqlstore.Open(ctx, sc.driver, sc.dsn)
	if err != nil {
		return nil, nil, err
	}
	if err := classify.MigrateDriver(ctx, st.DB(), st.Driver()); err != nil {
		st.Close()
		return nil, nil, err
	}
	tokens := classify.NewSQLStoreWith(st.DB(), classify.SQLStoreOptions{Driver: st.Driver()})
	c, err := classify.New(cfg, tokens)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return c, func() { tokens.Close(); st.Close() }, nil
}

func openClassifierMode(ctx context.Context, path string, cfg classify.Config) (*classify.Classifier, func(), error) {
	db, err := classify.OpenSQLite(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := classify.Migrate(ctx, db); err != nil {
		db.Close()
		return nil, nil, err
	}
	c, err := classify.New(cfg, classify.NewSQLStore(db))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return c, func() { db.Close() }, nil
}

func cmdClassify(args []string) int {
	fs := flag.NewFlagSet("classify", flag.ContinueOnError)
	explain := fs.Bool("explain", false, "list the ten features that pushed the score most")
	dbPath := fs.String("db", classifierDB(), "SQLite database holding the model ($MOAT_DB)")
	cfgPath := fs.String("config", "", "use the model and classifier settings of this Moat configuration (instead of --db)")
	user := fs.String("user", "", "score with this user's model (falls back to the site model)")
	alg := fs.String("classifier", "", "stack | logreg | chi2 (default: stack)")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat classify: unexpected argument %q (the message is read from stdin: moat classify < FILE)\n", fs.Arg(0))
		return 2
	}
	ctx := context.Background()
	cfg := classify.DefaultConfig()
	var sc storeConfig
	if *cfgPath != "" {
		var ok bool
		if sc, cfg, ok = modelFromConfig("classify", *cfgPath); !ok {
			return 2
		}
	} else if _, err := os.Stat(*dbPath); err != nil {
		// Scoring must not create an empty model at a mistyped path and
		// report every message as ham.
		fmt.Fprintf(os.Stderr, "moat classify: --db %s: %v (train a model with moat learn, or give --config)\n", *dbPath, errors.Unwrap(err))
		return 1
	}
	if *alg != "" {
		cfg.Algorithm = *alg
	}
	c, closeDB, err := openModel(ctx, sc, *dbPath, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat classify:", err)
		return 1
	}
	defer closeDB()
	in := bufio.NewReader(os.Stdin)
	if _, err := in.Peek(1); err != nil {
		if err == io.EOF {
			err = errors.New("empty message on stdin")
		}
		fmt.Fprintln(os.Stderr, "moat classify:", err)
		return 1
	}
	m, err := message.Parse(io.LimitReader(in, 64<<20), message.DefaultLimits())
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat classify:", err)
		return 1
	}
	r, err := c.Classify(ctx, *user, m, *explain)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat classify:", err)
		return 1
	}
	sym := bayes.Symbol(r.Prob)
	verdictText := "ham"
	if c.Spam(r) {
		verdictText = "spam"
	}
	if !r.Trained {
		verdictText += " (model not trained yet: the check stays silent)"
		sym.Score = 0
	}
	fmt.Printf("probability: %.4f\n", r.Prob)
	fmt.Printf("points:      %s (%s)\n", signed(sym.Score), sym.Name)
	fmt.Printf("verdict:     %s\n", verdictText)
	fmt.Printf("model:       %s (%d ham, %d spam learned)\n", r.Scope, r.Ham, r.Spam)
	if len(m.Malformed) > 0 {
		fmt.Printf("malformed:   %s\n", strings.Join(m.Malformed, ", "))
	}
	if *explain {
		fmt.Println("strongest features (positive = spam):")
		for _, t := range r.Top {
			fmt.Printf("  %+8.3f  %q\n", t.Value, t.Feature)
		}
	}
	return 0
}

func signed(f float64) string { return fmt.Sprintf("%+.2f", f) }

func cmdEval(args []string) int {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	corpus := fs.String("corpus", "", "labelled corpus: .tar.gz/.tar.bz2/.tar (ham/, spam/ members, or a TREC-style index), or a directory")
	seed := fs.Uint64("seed", 1, "seed of the online order (see docs/classifier.md)")
	orderBy := fs.String("order", "interleave", "interleave: each class shuffled by --seed, spread through the stream in proportion | corpus: the corpus's own order (a TREC index's, else sorted names)")
	alg := fs.String("classifier", "", "stack | logreg | chi2 (default: stack)")
	split := fs.Bool("split", false, "train on the first 50% of the order, test on the rest (instead of online)")
	threshold := fs.Float64("threshold", 0, "spam threshold for FP/FN (default: the classifier's, 0.95, where the bayes check alone tags)")
	lr := fs.Float64("learning-rate", 0, "logreg learning rate (default: the classifier's)")
	mode := fs.String("mode", "everything", "everything | on-error")
	features := fs.String("features", "", "logreg features: grams | words | grams+words (default: grams)")
	order := fs.Bool("print-order", false, "print the evaluation order (label TAB member) and exit")
	scores := fs.String("scores", "", "write per-message scores (member TAB label TAB probability) to FILE")
	withRules := fs.Bool("with-rules", false, "also report the gateway's content score: shipped rules + bayes points at the tag score")
	autolearn := fs.Bool("autolearn", false, "no true labels: the model learns only what the gateway's autolearn decides from the shipped rules' score (reports the gateway's content score)")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if *corpus == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: moat eval --corpus FILE.tar.gz [--seed N] [--classifier stack|logreg|chi2] [--split]")
		return 2
	}
	if *threshold < 0 || *threshold >= 1 {
		fmt.Fprintf(os.Stderr, "moat eval: --threshold %v: want a probability in (0, 1) (0: the classifier's)\n", *threshold)
		return 2
	}
	if *scores != "" { // before the evaluation, not after it
		f, err := os.Create(*scores)
		if err != nil {
			fmt.Fprintln(os.Stderr, "moat eval: --scores:", err)
			return 1
		}
		f.Close()
	}
	var items []classify.Item
	if err := classify.ReadSource(*corpus, func(it classify.Item) error { items = append(items, it); return nil }); err != nil {
		fmt.Fprintln(os.Stderr, "moat eval:", err)
		return 1
	}
	switch *orderBy {
	case "interleave":
		items = classify.OnlineOrder(items, *seed)
	case "corpus":
		items = slices.DeleteFunc(items, func(it classify.Item) bool { return it.Label == classify.Unknown })
	default:
		fmt.Fprintf(os.Stderr, "moat eval: --order %q: want interleave or corpus\n", *orderBy)
		return 2
	}
	if len(items) == 0 {
		fmt.Fprintln(os.Stderr, "moat eval: no labelled messages (need ham/ and spam/ in member paths, or an index)")
		return 1
	}
	isSpam := func(it classify.Item) bool { return it.Label == classify.Spam }
	isHam := func(it classify.Item) bool { return it.Label == classify.Ham }
	if !slices.ContainsFunc(items, isSpam) || !slices.ContainsFunc(items, isHam) {
		fmt.Fprintln(os.Stderr, "moat eval: the corpus needs both ham and spam (ROC AUC compares them)")
		return 1
	}
	if *order {
		w := bufio.NewWriter(os.Stdout)
		for _, it := range items {
			fmt.Fprintf(w, "%s\t%s\n", it.Label, it.Name)
		}
		w.Flush()
		return 0
	}
	cfg := classify.DefaultConfig()
	if *alg != "" {
		cfg.Algorithm = *alg
	}
	cfg.TrainMode = *mode
	if *threshold > 0 {
		cfg.Threshold = *threshold
	}
	if *lr > 0 {
		cfg.LearningRate = *lr
	}
	if *features != "" {
		cfg.Features = *features
	}
	c, err := classify.New(cfg, classify.NewMemStore())
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat eval:", err)
		return 2
	}
	ctx := context.Background()
	if *autolearn {
		if err := evalAutolearn(ctx, os.Stdout, c, items); err != nil {
			fmt.Fprintln(os.Stderr, "moat eval:", err)
			return 1
		}
		return 0
	}
	var res *classify.EvalResult
	if *split {
		res, err = classify.Split(ctx, c, items, 0.5, message.DefaultLimits())
	} else {
		res, err = classify.Online(ctx, c, items, message.DefaultLimits())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat eval:", err)
		return 1
	}
	res.Report(os.Stdout)
	if *withRules {
		if err := reportWithRules(os.Stdout, items, res); err != nil {
			fmt.Fprintln(os.Stderr, "moat eval:", err)
			return 1
		}
	}
	if *scores != "" {
		if err := writeScores(*scores, res); err != nil {
			fmt.Fprintln(os.Stderr, "moat eval:", err)
			return 1
		}
	}
	return 0
}

func writeScores(path string, res *classify.EvalResult) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, s := range res.Scored {
		fmt.Fprintf(w, "%s\t%s\t%.6f\n", s.Name, s.Label, s.Prob)
	}
	return errors.Join(w.Flush(), f.Close())
}

// modelFromConfig returns the store and classifier settings that
// `moat serve` uses with the configuration at path.
func modelFromConfig(cmd, path string) (storeConfig, classify.Config, bool) {
	cfg, ok := loadConfig(path)
	if !ok {
		return storeConfig{}, classify.Config{}, false
	}
	if cfg.Store.Driver == "sqlite" || cfg.Store.Driver == "" {
		if err := os.MkdirAll(filepath.Dir(cfg.Store.DSN), 0o750); err != nil {
			fmt.Fprintf(os.Stderr, "moat %s: %v\n", cmd, err)
			return storeConfig{}, classify.Config{}, false
		}
	}
	driver := cfg.Store.Driver
	if driver == "" {
		driver = "sqlite"
	}
	return storeConfig{driver: driver, dsn: cfg.Store.DSN}, cfg.Checks.Bayes.Classifier, true
}

// learnSource is one class's messages: all of path, or (byPath) only the
// members whose path says label (ham/ or spam/).
type learnSource struct {
	path   string
	label  classify.Label
	byPath bool
}

// itemLabel is the class an item's source gives it (its path below the
// corpus root, or a TREC-style index), else the one its whole name says.
func itemLabel(it classify.Item) classify.Label {
	if it.Label != classify.Unknown {
		return it.Label
	}
	return classify.LabelFromPath(it.Name)
}

func (src learnSource) read(fn func(classify.Item) error) error {
	return classify.ReadSource(src.path, func(it classify.Item) error {
		if src.byPath {
			if l := itemLabel(it); l != src.label {
				if l == classify.Unknown && src.label == classify.Ham {
					fmt.Fprintf(os.Stderr, "skip %s: no ham/ or spam/ in its path\n", it.Name)
				}
				return nil
			}
		}
		return fn(it)
	})
}

// listable reports whether path can be listed before it is read: a tar
// archive, which classify.ReadSource holds in memory whole (to sort the
// members) before handing out the first message, or a directory, whose
// files classify.ListDir names without reading them.
func listable(path string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	if st.IsDir() {
		return true
	}
	return classify.IsArchive(path)
}

// list returns the messages of a listable path: an archive's with their
// data, a directory's without (classify.LoadItem reads each when it is
// its turn).
func list(path string) ([]classify.Item, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return classify.ListDir(path)
	}
	var all []classify.Item
	err := classify.ReadSource(path, func(it classify.Item) error { all = append(all, it); return nil })
	return all, err
}

// interleave calls fn for every message of srcs. With one source it
// streams it; with several (ham and spam) it counts each first, then
// reads them side by side and takes the next message from the source
// whose share consumed so far is smallest, so the classes are spread
// evenly through the lessons. Memory stays bounded: each source is read
// in order by its own goroutine, one message ahead. A listable source
// (an archive or a directory) is listed once, not once to count and once
// per class, and each of its messages is read once.
func interleave(ctx context.Context, srcs []learnSource, fn func(classify.Item, classify.Label) error) error {
	if len(srcs) == 1 {
		return srcs[0].read(func(it classify.Item) error { return fn(it, srcs[0].label) })
	}
	sizes := make([]int, len(srcs))
	inMem := make([]bool, len(srcs))
	lists := make([][]classify.Item, len(srcs)) // a listable source's messages, in order
	listed := map[string][]classify.Item{}
	for i, src := range srcs {
		if inMem[i] = listable(src.path); !inMem[i] {
			if err := src.read(func(classify.Item) error { sizes[i]++; return nil }); err != nil {
				return err
			}
			continue
		}
		all, ok := listed[src.path]
		if !ok {
			var err error
			if all, err = list(src.path); err != nil {
				return err
			}
			listed[src.path] = all
		}
		for _, it := range all {
			if src.byPath {
				if l := itemLabel(it); l != src.label {
					if l == classify.Unknown && src.label == classify.Ham {
						fmt.Fprintf(os.Stderr, "skip %s: no ham/ or spam/ in its path\n", it.Name)
					}
					continue
				}
			}
			lists[i] = append(lists[i], it)
		}
		sizes[i] = len(lists[i])
	}
	listed = nil
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type next struct {
		it  classify.Item
		err error
	}
	chans := make([]chan next, len(srcs))
	for i, src := range srcs {
		ch := make(chan next)
		chans[i] = ch
		if inMem[i] {
			go func() {
				defer close(ch)
				for j, it := range lists[i] {
					lists[i][j] = classify.Item{} // held by the consumer from now on
					n := next{it: it}
					if err := classify.LoadItem(&n.it); err != nil {
						n = next{err: err}
					}
					select {
					case ch <- n:
					case <-ctx.Done():
						return
					}
					if n.err != nil {
						return
					}
				}
			}()
			continue
		}
		go func() {
			defer close(ch)
			err := src.read(func(it classify.Item) error {
				select {
				case ch <- next{it: it}:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			if err != nil && ctx.Err() == nil {
				select {
				case ch <- next{err: err}:
				case <-ctx.Done():
				}
			}
		}()
	}
	taken := make([]int, len(srcs))
	open := len(srcs)
	for open > 0 {
		// The open source with the smallest consumed fraction; ties go to
		// the first (ham).
		pick := -1
		for i := range srcs {
			if chans[i] == nil {
				continue
			}
			if pick < 0 || float64(taken[i])/float64(max(sizes[i], 1)) < float64(taken[pick])/float64(max(sizes[pick], 1)) {
				pick = i
			}
		}
		n, ok := <-chans[pick]
		if !ok {
			chans[pick] = nil
			open--
			continue
		}
		if n.err != nil {
			return n.err
		}
		taken[pick]++
		if err := fn(n.it, srcs[pick].label); err != nil {
			return err
		}
	}
	return nil
}
