package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"moat.dev/moat/internal/config"
	"moat.dev/moat/internal/queue"
)

const queueUsage = `usage: moat queue [--config FILE | --spool DIR] [--json] COMMAND

commands:
  list [--domain D] [--held]   messages with age, size, sender, recipients, next attempt
  show ID                      one message in detail
  retry ID                     attempt the message's pending recipients now
  retry --domain D             attempt every pending recipient in domain D now
  delete ID                    remove the message (no DSN is sent)
  hold ID | release ID         stop / resume delivery of the message

Works with or without a running "moat serve": changes go through the
daemon when it holds the spool, else straight to the files.
Exit status: 0 ok, 1 message not found, 2 usage, configuration or spool error.
`

// cmdQueue runs `moat queue`.
func cmdQueue(args []string) int { return runQueue(args, os.Stdout, os.Stderr) }

func runQueue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, queueUsage) }
	cfgFile := fs.String("config", "", "configuration file (the spool is its data_dir/spool)")
	spool := fs.String("spool", "", "spool directory (default ./data/spool)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	domain := fs.String("domain", "", "domain for list and retry")
	held := fs.Bool("held", false, "list only held messages")
	// Flags may come before or after the command and its argument.
	flags, pos := splitArgs(args, map[string]bool{"config": true, "spool": true, "domain": true})
	if err := fs.Parse(flags); err != nil {
		return parseExit(err)
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "moat queue: "+format+"\n", a...)
		fmt.Fprint(stderr, queueUsage)
		return 2
	}
	if len(pos) == 0 {
		return usageErr("missing command")
	}
	dir := *spool
	switch {
	case *cfgFile != "" && dir != "":
		return usageErr("--config and --spool are exclusive")
	case *cfgFile != "":
		c, err := config.Load(*cfgFile)
		if err != nil {
			fmt.Fprintf(stderr, "moat queue: %v\n", err)
			return 2
		}
		// The spool moat serve uses: queue.spool_dir, by default
		// DATA_DIR/spool (config.Load fills it in).
		dir = c.Queue.SpoolDir
	case dir == "":
		dir = "./data/spool"
	}
	c := queue.NewClient(dir)

	cmd, rest := pos[0], pos[1:]
	needID := func() (string, bool) {
		if len(rest) != 1 {
			return "", false
		}
		return strings.ToUpper(rest[0]), true
	}
	fail := func(id string, err error) int {
		if errors.Is(err, queue.ErrNotFound) {
			fmt.Fprintf(stderr, "moat queue: %s: no such message\n", id)
			return 1
		}
		fmt.Fprintf(stderr, "moat queue: %v\n", err)
		return 2
	}
	done := func(format string, a ...any) int {
		if *asJSON {
			json.NewEncoder(stdout).Encode(map[string]any{"ok": true})
		} else {
			fmt.Fprintf(stdout, format+"\n", a...)
		}
		return 0
	}

	switch cmd {
	case "list":
		if len(rest) != 0 {
			return usageErr("list takes no arguments")
		}
		list, err := c.List(queue.Filter{Domain: *domain, HeldOnly: *held})
		if err != nil {
			return fail("", err)
		}
		if *asJSON {
			if list == nil {
				list = []queue.Summary{}
			}
			printJSON(stdout, list)
			return 0
		}
		printList(stdout, list, time.Now())
		return 0
	case "show":
		id, ok := needID()
		if !ok {
			return usageErr("show takes one queue ID")
		}
		s, err := c.Show(id)
		if err != nil {
			return fail(id, err)
		}
		if *asJSON {
			printJSON(stdout, s)
			return 0
		}
		printShow(stdout, s, time.Now())
		return 0
	case "retry":
		if *domain != "" {
			if len(rest) != 0 {
				return usageErr("retry takes either an ID or --domain")
			}
			n, err := c.RetryDomain(*domain)
			if err != nil {
				return fail("", err)
			}
			if *asJSON {
				json.NewEncoder(stdout).Encode(map[string]any{"ok": true, "messages": n})
				return 0
			}
			fmt.Fprintf(stdout, "%d message(s) for %s scheduled for immediate retry\n", n, *domain)
			return 0
		}
		id, ok := needID()
		if !ok {
			return usageErr("retry takes one queue ID or --domain D")
		}
		if err := c.RetryNow(id); err != nil {
			return fail(id, err)
		}
		return done("%s: scheduled for immediate retry", id)
	case "delete", "hold", "release":
		id, ok := needID()
		if !ok {
			return usageErr("%s takes one queue ID", cmd)
		}
		op := map[string]func(string) error{"delete": c.Delete, "hold": c.Hold, "release": c.Release}[cmd]
		if err := op(id); err != nil {
			return fail(id, err)
		}
		return done("%s: %s", id, map[string]string{"delete": "deleted", "hold": "held", "release": "released"}[cmd])
	default:
		return usageErr("unknown command %q", cmd)
	}
}

// splitArgs separates flags (with their values) from positional arguments,
// so that flags may follow the command.
func splitArgs(args []string, takesValue map[string]bool) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if takesValue[name] && !strings.Contains(name, "=") && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, pos
}

func printList(w io.Writer, list []queue.Summary, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(w, "queue is empty")
		return
	}
	const row = "%-16s  %7s  %9s  %-32s  %s\n"
	fmt.Fprintf(w, row, "ID", "AGE", "SIZE", "FROM", "NEXT ATTEMPT")
	rcpts := 0
	for _, s := range list {
		fmt.Fprintf(w, row, s.ID, age(now.Sub(s.Received)), fmt.Sprint(s.Size), "<"+s.From+">", nextText(s, now))
		for _, r := range s.Rcpts {
			fmt.Fprintf(w, "    %-9s <%s>", r.Status, r.Addr)
			if d := rcptDetail(r); d != "" {
				fmt.Fprintf(w, "  %s", d)
			}
			fmt.Fprintln(w)
		}
		rcpts += s.Pending()
	}
	fmt.Fprintf(w, "-- %d message(s), %d pending recipient(s)\n", len(list), rcpts)
}

func rcptDetail(r queue.RcptState) string {
	var b strings.Builder
	if r.Attempts > 0 {
		fmt.Fprintf(&b, "%d attempt(s)", r.Attempts)
	}
	if r.LastReply != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(r.LastReply)
		if r.Host != "" {
			fmt.Fprintf(&b, " (%s)", r.Host)
		}
	}
	return b.String()
}

func nextText(s queue.Summary, now time.Time) string {
	switch {
	case s.Held:
		return "on hold"
	case s.Pending() == 0:
		return "-"
	case !s.NextAttempt.After(now):
		return "now"
	}
	return "in " + age(s.NextAttempt.Sub(now))
}

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func printShow(w io.Writer, s queue.Summary, now time.Time) {
	fmt.Fprintf(w, "ID:           %s\n", s.ID)
	fmt.Fprintf(w, "Received:     %s (%s ago)\n", s.Received.Format(time.RFC3339), age(now.Sub(s.Received)))
	fmt.Fprintf(w, "From:         <%s>\n", s.From)
	fmt.Fprintf(w, "Size:         %d\n", s.Size)
	if s.Client.IP != "" {
		fmt.Fprintf(w, "Client:       %s helo=%s ptr=%s %s\n", s.Client.IP, s.Client.Helo, s.Client.PTR, s.Client.Proto)
	}
	if s.IsDSN {
		fmt.Fprintf(w, "Type:         delivery status notification\n")
	}
	fmt.Fprintf(w, "Next attempt: %s\n", nextText(s, now))
	fmt.Fprintf(w, "Recipients:\n")
	for _, r := range s.Rcpts {
		fmt.Fprintf(w, "  <%s> domain=%q %s", r.Addr, r.Domain, r.Status)
		if d := rcptDetail(r); d != "" {
			fmt.Fprintf(w, ", %s", d)
		}
		if r.Status == queue.StatusPending && !r.Next.IsZero() {
			fmt.Fprintf(w, ", next %s", r.Next.Format(time.RFC3339))
		}
		fmt.Fprintln(w)
	}
}

// printJSON writes v as indented JSON (the --json output of the CLIs).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
