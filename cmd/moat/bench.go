package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"moat.dev/moat/internal/bench"
)

func cmdBench(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	msgs := fs.Int("messages", 2000, "messages per run")
	size := fs.Int("size", 4096, "message size in bytes")
	senders := fs.String("senders", "1,20,100", "parallel sending sessions, comma-separated")
	profiles := fs.String("profiles", "core,envelope", "moat configurations: core (no checks), envelope (connection and envelope checks, DNS answered locally), full (every layer, DNS answered locally, a real clamd)")
	markdown := fs.Bool("markdown", false, "print a Markdown table at the end")
	runs := fs.Int("runs", 1, "measure each configuration this many times and report the median (by end-to-end rate)")
	logLevel := fs.String("log-level", "info", "moat's log level during the runs (info: the production cost of one line per transaction)")
	clamdAddr := fs.String("clamd", "", "clamd address for the full profile (unix:/path or tcp:host:port); empty starts a clamd with a tiny signature database")
	output := fs.String("output", "", "also write the Markdown table to this file")
	message := fs.String("message", "", "send this file as every message (smtp-source -F) instead of generated filler of --size bytes, e.g. a real mail")
	train := fs.String("train", "", "labelled corpus (.tar.gz with ham/ and spam/ members, or a directory) the full profile's classifier learns before its runs")
	moatBin := fs.String("moat", "", "moat binary to measure (default: this one), e.g. an older build for a before/after comparison")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: moat bench [flags]\n\nDrives smtp-source (Postfix) one message per connection into smtp-sink (the ceiling) and\nthrough `moat serve` into a sink backend, in the same run; reports msgs/s, latency, peak RSS.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	// Usage errors before the ceiling run (minutes with the defaults),
	// not after it.
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "moat bench: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *msgs < 1 {
		return usageErr("--messages %d: must be >= 1", *msgs)
	}
	if *size < 1 {
		return usageErr("--size %d: must be >= 1", *size)
	}
	for _, p := range strings.Split(*profiles, ",") {
		if p != "core" && p != "envelope" && p != "full" {
			return usageErr("--profiles: unknown profile %q (want core, envelope or full)", p)
		}
	}
	switch *logLevel {
	case "debug", "info", "warn", "error":
	default:
		return usageErr("--log-level %q is not one of debug, info, warn, error", *logLevel)
	}
	if *moatBin != "" {
		if st, err := os.Stat(*moatBin); err != nil {
			return usageErr("--moat: %v", err)
		} else if st.IsDir() || st.Mode()&0o111 == 0 {
			return usageErr("--moat %s: not an executable file", *moatBin)
		}
	}
	var ss []int
	for _, s := range strings.Split(*senders, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "moat bench: --senders: %q is not a positive number\n", s)
			return 2
		}
		ss = append(ss, n)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *moatBin != "" {
		self = *moatBin
	}
	if *runs < 1 {
		fmt.Fprintln(os.Stderr, "moat bench: --runs must be >= 1")
		return 2
	}
	for flag, path := range map[string]string{"--message": *message, "--train": *train} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			fmt.Fprintf(os.Stderr, "moat bench: %s: %v\n", flag, err)
			return 2
		}
	}
	o := bench.Options{Moat: self, Messages: *msgs, Size: *size, Senders: ss, Profiles: strings.Split(*profiles, ","),
		ProfileConfig: bench.ProfileConfig, Log: os.Stdout, Runs: *runs, LogLevel: *logLevel, Clamd: *clamdAddr,
		Message: *message, Train: *train}
	rows, err := bench.Run(ctx, o)
	if *markdown || err != nil {
		bench.Markdown(os.Stdout, rows, o)
	}
	if *output != "" {
		f, ferr := os.Create(*output)
		if ferr == nil {
			bench.Markdown(f, rows, o)
			ferr = f.Close()
		}
		if ferr != nil {
			fmt.Fprintln(os.Stderr, "moat bench: --output:", ferr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat bench:", err)
		return 1
	}
	if *markdown {
		return 0
	}
	return 0
}
