// Command moat is the Moat email security gateway: one binary whose
// subcommands share the internal packages. This file only dispatches.
package main

import (
	"fmt"
	"os"
	"sort"
)

type command struct {
	run  func(args []string) int
	help string
}

var commands = map[string]command{
	"serve":       {cmdServe, "run the gateway (SMTP, queue, delivery, metrics)"},
	"config":      {cmdConfig, "config check FILE: validate a configuration without starting anything"},
	"queue":       {cmdQueue, "list|show|retry|delete: inspect and steer the delivery queue"},
	"sink":        {cmdSink, "a tiny SMTP server writing each message to a Maildir (demo backend, test peer)"},
	"verify-pass": {cmdVerifyPass, "verify the X-Moat-Pass mark of a message on stdin"},
	"pass-secret": {cmdPassSecret, "print a customer domain's pass-mark secret for its backend"},
	"learn":       {cmdLearn, "train the classifier: --spam|--ham PATH (file, Maildir, mbox, .tar.gz)"},
	"classify":    {cmdClassify, "score a message on stdin and explain the verdict"},
	"eval":        {cmdEval, "evaluate the classifier on a corpus with the TREC online protocol"},
	"audit":       {cmdAudit, "audit domains for leakage: MX, guessable names, direct reachability"},
	"lockdown":    {cmdLockdown, "generate firewall/backend lockdown configuration"},
	"milter":      {cmdMilter, "run the pass-mark verifying milter on a customer's backend"},
	"quarantine":  {cmdQuarantine, "list|show|release|delete held messages; user and partner accounts for the web UI"},
	"token":       {cmdToken, "create an admin API token: token create --role site|partner:NAME|domain:NAME --label TEXT"},
	"bench":       {cmdBench, "benchmark moat against smtp-sink with smtp-source"},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: moat COMMAND [options]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", n, commands[n].help)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "moat: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(c.run(os.Args[2:]))
}
