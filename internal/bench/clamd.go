package bench

import (
	"fmt"
	"os"
	"strings"

	"moat.dev/moat/internal/clamdrun"
)

// startClamd starts a real clamd (Debian clamav-daemon) for the full
// profile, on a Unix socket, through internal/clamdrun (as the tests do):
// a tiny locally written signature database (EICAR and a random marker),
// so no download is needed. Scanning cost is clamd's real per-message
// work (protocol, parsing MIME, running the matcher) over a small
// database; with the full ClamAV database clamd needs ~1 GB of memory and
// more CPU per message (not measured here).
//
// MOAT_BENCH_CLAMD_TMP, if set, is clamd's TemporaryDirectory (e.g. a
// tmpfs).
func startClamd() (*clamdrun.Clamd, error) {
	bin, err := tool("clamd")
	if err != nil {
		return nil, fmt.Errorf("%s (Debian package clamav-daemon)", strings.TrimSuffix(err.Error(), " (Debian package postfix)"))
	}
	return clamdrun.Start(clamdrun.Options{
		Clamd:           bin,
		StreamMaxLength: 25 << 20,
		MaxThreads:      10,
		NoTCP:           true,
		TempDir:         os.Getenv("MOAT_BENCH_CLAMD_TMP"),
	})
}
