package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"

	"moat.dev/moat/internal/sink"
)

// cmdSink runs `moat sink`: a tiny SMTP server writing each message to a
// Maildir, for demos and as a test peer.
func cmdSink(args []string) int {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:2526", "listen address")
	maildir := fs.String("maildir", "./data/sink", "Maildir to write messages to")
	fsync := fs.Bool("fsync", false, "fsync each message before answering 250")
	noStore := fs.Bool("no-store", false, "count messages without storing them (benchmarks)")
	xclient := fs.Bool("xclient", false, "advertise XCLIENT/XFORWARD and record the values in X-Sink-XClient/X-Sink-XForward")
	rejectRcpt := fs.String("reject-rcpt", "", "answer 550 5.1.1 to recipients matching this regular expression")
	tempfail := fs.Bool("tempfail", false, "answer 451 4.3.0 to every transaction")
	noUTF8 := fs.Bool("no-smtputf8", false, "do not advertise SMTPUTF8")
	cert := fs.String("tls-cert", "", "PEM certificate: offer STARTTLS (with --tls-key)")
	key := fs.String("tls-key", "", "PEM private key for --tls-cert")
	quiet := fs.Bool("quiet", false, "do not print a line per message")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: moat sink [--listen ADDR] [--maildir DIR] [options]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat sink: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	// Usage errors before anything (the Maildir) is created.
	if *listen != "" {
		if _, p, err := net.SplitHostPort(*listen); err != nil {
			fmt.Fprintf(os.Stderr, "moat sink: --listen %q: %v\n", *listen, err)
			return 2
		} else if _, err := net.LookupPort("tcp", p); err != nil {
			fmt.Fprintf(os.Stderr, "moat sink: --listen %q: port %q is not 0-65535 or a service name\n", *listen, p)
			return 2
		}
	}
	if *rejectRcpt != "" {
		if _, err := regexp.Compile(*rejectRcpt); err != nil {
			fmt.Fprintf(os.Stderr, "moat sink: --reject-rcpt: %v\n", err)
			return 2
		}
	}
	cfg := sink.Config{
		Addr: *listen, Maildir: *maildir, Fsync: *fsync, NoStore: *noStore, XClient: *xclient,
		RejectRcpt: *rejectRcpt, TempFail: *tempfail, NoSMTPUTF8: *noUTF8,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	if (*cert == "") != (*key == "") {
		fmt.Fprintln(os.Stderr, "moat sink: --tls-cert and --tls-key go together")
		return 2
	}
	if *cert != "" {
		kp, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			fmt.Fprintf(os.Stderr, "moat sink: %v\n", err)
			return 1
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{kp}}
	}
	if !*quiet {
		cfg.OnMessage = func(d sink.Delivery) {
			where := d.Path
			if where == "" {
				where = "(not stored)"
			}
			tlsNote := ""
			if d.TLS {
				tlsNote = " tls"
			}
			fmt.Printf("message %s from=<%s> rcpts=<%s> size=%d client=%s%s %s\n",
				d.ID, d.From, strings.Join(d.Rcpts, ">,<"), d.Size, d.Remote, tlsNote, where)
		}
	}
	srv, err := sink.Start(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "moat sink: %v\n", err)
		return 1
	}
	if *noStore {
		fmt.Printf("moat sink listening on %s (not storing messages)\n", srv.Addr())
	} else {
		fmt.Printf("moat sink listening on %s, writing to Maildir %s\n", srv.Addr(), *maildir)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	srv.Close()
	fmt.Printf("moat sink: %d messages\n", srv.Count())
	return 0
}
