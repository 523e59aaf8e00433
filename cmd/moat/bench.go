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
	profiles := fs.String("profiles", "core,envelope", "moat configurations: core (no checks), full (every layer, DNS answered locally)")
	markdown := fs.Bool("markdown", false, "print a Markdown table at the end")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: moat bench [flags]\n\nDrives smtp-source (Postfix) one message per connection into smtp-sink (the ceiling) and\nthrough `moat serve` into a sink backend, in the same run; reports msgs/s, latency, peak RSS.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
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
	o := bench.Options{Moat: self, Messages: *msgs, Size: *size, Senders: ss, Profiles: strings.Split(*profiles, ","),
		ProfileConfig: bench.ProfileConfig, Log: os.Stdout}
	rows, err := bench.Run(ctx, o)
	if *markdown || err != nil {
		bench.Markdown(os.Stdout, rows, o)
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
