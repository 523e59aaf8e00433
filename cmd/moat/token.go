package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"moat.dev/moat/internal/api"
	"moat.dev/moat/internal/store/sqlstore"
)

func cmdToken(args []string) int {
	if len(args) < 1 || args[0] != "create" {
		fmt.Fprintln(os.Stderr, "usage: moat token create --config FILE --role site|partner:NAME|domain:NAME --label TEXT")
		return 2
	}
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	cfgPath := fs.String("config", "moat.yaml", "configuration file")
	role := fs.String("role", "", "site, partner:NAME or domain:NAME")
	label := fs.String("label", "", "who or what the token is for (shown in the audit log)")
	if err := fs.Parse(args[1:]); err != nil {
		return parseExit(err)
	}
	if *role == "" || *label == "" {
		fmt.Fprintln(os.Stderr, "moat token create: --role and --label are required")
		return 2
	}
	if fs.NArg() > 0 {
		// e.g. an unquoted --label with spaces: refuse rather than mint a
		// token labelled with only the first word.
		fmt.Fprintf(os.Stderr, "moat token create: unexpected argument %q (quote a --label with spaces)\n", fs.Arg(0))
		return 2
	}
	// Check the role before the store is opened (and created).
	if _, _, err := api.ParseRole(*role); err != nil {
		fmt.Fprintln(os.Stderr, "moat token create: --role:", err)
		return 2
	}
	if len(*label) > 100 {
		fmt.Fprintln(os.Stderr, "moat token create: --label: must be 1-100 characters")
		return 2
	}
	cfg, ok := loadConfig(*cfgPath)
	if !ok {
		return 2
	}
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat token:", err)
		return 1
	}
	defer st.Close()
	tok, err := api.CreateToken(ctx, st, *role, *label)
	if err != nil {
		fmt.Fprintln(os.Stderr, "moat token:", err)
		return 2
	}
	fmt.Println(tok)
	return 0
}
