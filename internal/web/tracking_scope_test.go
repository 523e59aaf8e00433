package web

import (
	"log/slog"
	"strings"
	"testing"
)

// TestTrackingHidesOtherDomainsRelayEvents: the relay logs a failed
// backend with the domain but no recipient. On a message to two domains a
// scoped admin must not see the other domain's backend failures (they
// name its backend and its error); its own stay.
func TestTrackingHidesOtherDomainsRelayEvents(t *testing.T) {
	t.Parallel()
	e := newConsole(t, consoleOpts{report: plantedReport(), bypass: plantedBypass(), logTxns: func(log *slog.Logger) {
		logTraffic(log)
		log.With("queue_id", "QMULTI", "domain", "a.example").Warn("relay: backend failed",
			"backend", "10.0.0.5:25", "err", "alice-backend-down")
		log.With("queue_id", "QMULTI", "domain", "b.example").Warn("relay: backend failed",
			"backend", "10.9.9.9:25", "err", "carol-backend-down")
	}})
	adm := e.login(t, "adm-a")
	code, body, _ := adm.page("/tracking/QMULTI")
	if code != 200 || !strings.Contains(body, "alice-backend-down") {
		t.Fatalf("domain admin's view of a shared message (%d) lacks its own relay event", code)
	}
	if strings.Contains(body, "carol-backend-down") || strings.Contains(body, "10.9.9.9") {
		t.Errorf("domain admin sees the other domain's relay event (backend 10.9.9.9:25)")
	}
	root := e.login(t, "root")
	if _, body, _ := root.page("/tracking/QMULTI"); !strings.Contains(body, "carol-backend-down") {
		t.Errorf("site admin does not see every relay event")
	}
}
