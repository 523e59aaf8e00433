package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"moat.dev/moat/internal/app"
	"moat.dev/moat/internal/config"
	"moat.dev/moat/internal/passmark"
)

// loadConfig loads the file named by --config, exiting 2 with a message
// naming the problem when it is unusable.
func loadConfig(path string) (*config.Config, bool) {
	c, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat:", err)
		return nil, false
	}
	return c, true
}

func cmdServe(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfgPath := fs.String("config", "moat.yaml", "configuration file")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat serve: unexpected argument %q (give the configuration with --config FILE)\n", fs.Arg(0))
		return 2
	}
	cfg, ok := loadConfig(*cfgPath)
	if !ok {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := app.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat:", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "moat:", err)
		return 1
	}
	return 0
}

func cmdConfig(args []string) int {
	if len(args) < 1 || args[0] != "check" {
		fmt.Fprintln(os.Stderr, "usage: moat config check [--config] FILE")
		return 2
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "configuration file")
	if err := fs.Parse(args[1:]); err != nil {
		return parseExit(err)
	}
	path := *cfgPath
	if path == "" && fs.NArg() == 1 {
		path = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat config check: unexpected argument %q (check one file at a time)\n", fs.Arg(fs.NArg()-1))
		return 2
	}
	if path == "" {
		fmt.Fprintln(os.Stderr, "usage: moat config check [--config] FILE")
		return 2
	}
	cfg, ok := loadConfig(path)
	if !ok {
		return 2
	}
	fmt.Printf("%s: ok (%d domains)\n", path, len(cfg.Domains))
	return 0
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func cmdVerifyPass(args []string) int {
	fs := flag.NewFlagSet("verify-pass", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "Moat configuration (uses the site master key)")
	secretFile := fs.String("secret-file", "", "the domain's pass secret (hex), as printed by `moat pass-secret`")
	masterFile := fs.String("master-file", "", "the site master key file (hex)")
	var rcpts listFlag
	fs.Var(&rcpts, "rcpt", "envelope recipient the message was delivered to (repeatable; default: Delivered-To/X-Original-To fields)")
	quiet := fs.Bool("q", false, "print nothing, only set the exit code")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: moat verify-pass (--config F | --master-file F | --secret-file F) [--rcpt ADDR]... < message\nexit 0: genuine mark; 1: missing, forged, replayed or altered; 2: usage error")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "moat verify-pass: unexpected argument %q (the message is read from stdin)\n", fs.Arg(0))
		return 2
	}
	// Refuse a missing key option before waiting on stdin.
	if *secretFile == "" && *masterFile == "" && *cfgPath == "" {
		fs.Usage()
		return 2
	}
	raw, err := io.ReadAll(io.LimitReader(os.Stdin, 256<<20))
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat verify-pass: reading stdin:", err)
		return 2
	}
	if len(rcpts) == 0 {
		rcpts = deliveredTo(raw)
		if len(rcpts) == 0 {
			fmt.Fprintln(os.Stderr, "moat verify-pass: no --rcpt given and the message has no Delivered-To or X-Original-To field")
			return 2
		}
	}
	var secret []byte
	switch {
	case *secretFile != "":
		secret, err = passmark.ReadKeyFile(*secretFile)
	case *masterFile != "" || *cfgPath != "":
		path := *masterFile
		if path == "" {
			cfg, ok := loadConfig(*cfgPath)
			if !ok {
				return 2
			}
			path = cfg.Pass.SecretFile
		}
		var master []byte
		master, err = passmark.ReadKeyFile(path)
		if err == nil {
			// The mark names its domain; the derived key binds it.
			p, perr := markDomain(raw)
			if perr != nil {
				report(*quiet, perr)
				return 1
			}
			secret = passmark.DomainSecret(master, p)
		}
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat verify-pass:", err)
		return 2
	}
	p, err := passmark.VerifyMessage(secret, raw, rcpts, passmark.Options{})
	if err != nil {
		report(*quiet, err)
		return 1
	}
	if !*quiet {
		fmt.Printf("pass: genuine mark for %s, queue id %s, issued %s\n", strings.Join(rcpts, ", "), p.ID, p.Time.UTC().Format("2006-01-02 15:04:05Z"))
	}
	return 0
}

func report(quiet bool, err error) {
	if !quiet {
		fmt.Printf("FAIL: %v\n", err)
	}
}

func headerOf(raw []byte) textproto.MIMEHeader {
	end := bytes.Index(raw, []byte("\r\n\r\n"))
	if end < 0 {
		end = bytes.Index(raw, []byte("\n\n"))
	}
	if end < 0 {
		end = len(raw)
	}
	h, _ := textproto.NewReader(bufio.NewReader(io.MultiReader(bytes.NewReader(raw[:end]), strings.NewReader("\r\n\r\n")))).ReadMIMEHeader()
	return h
}

func deliveredTo(raw []byte) []string {
	h := headerOf(raw)
	var out []string
	for _, k := range []string{"Delivered-To", "X-Original-To"} {
		for _, v := range h[k] {
			v = strings.Trim(strings.TrimSpace(v), "<>")
			if v != "" {
				out = append(out, v)
			}
		}
		if len(out) > 0 {
			return out[:1] // the outermost delivery
		}
	}
	return nil
}

func markDomain(raw []byte) (string, error) {
	vals := headerOf(raw)[textproto.CanonicalMIMEHeaderKey(passmark.Field)]
	if len(vals) == 0 {
		return "", passmark.ErrMissing
	}
	p, err := passmark.Parse(vals[0])
	if err != nil {
		return "", err
	}
	return p.Domain, nil
}

func cmdPassSecret(args []string) int {
	fs := flag.NewFlagSet("pass-secret", flag.ContinueOnError)
	cfgPath := fs.String("config", "moat.yaml", "configuration file")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: moat pass-secret [--config FILE] DOMAIN")
		return 2
	}
	// A typo must not print a secret (nor create the master key): the
	// backend would then refuse every message.
	domain, ok := normDomain(fs.Arg(0))
	if !ok {
		fmt.Fprintf(os.Stderr, "moat pass-secret: %q is not a valid domain name\n", fs.Arg(0))
		return 2
	}
	cfg, ok := loadConfig(*cfgPath)
	if !ok {
		return 2
	}
	master, err := passmark.ReadKeyFile(cfg.Pass.SecretFile)
	if errors.Is(err, os.ErrNotExist) {
		master, err = passmark.LoadOrCreateMaster(cfg.Pass.SecretFile)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat pass-secret:", err)
		return 1
	}
	fmt.Println(hex.EncodeToString(passmark.DomainSecret(master, domain)))
	return 0
}
