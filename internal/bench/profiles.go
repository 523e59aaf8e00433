package bench

import (
	"fmt"
	"strings"
)

var allLayers = []string{"lists", "rdns", "dnsbl", "botnet", "helo", "spf", "recipient", "greylist", "attach", "clamav", "bayes", "rules", "dkim", "dmarc", "uribl"}

func layersOff(names ...string) string {
	var b strings.Builder
	b.WriteString("policy:\n  layers:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "    %s: {mode: off}\n", n)
	}
	return b.String()
}

// ProfileConfig returns the configuration fragment of a named profile.
func ProfileConfig(profile string, env *Env) (string, error) {
	dns := fmt.Sprintf("dns:\n  resolvers: [%q]\n  local_zones: false\n", env.DNSAddr)
	switch profile {
	case "core":
		// The bare gateway: SMTP, durable queue, relay; no checks.
		return layersOff(allLayers...), nil
	case "envelope":
		// Issue 3's layers (connection and envelope stage) with DNS answered
		// by a local server: the cached steady state.
		return dns + layersOff("attach", "clamav", "bayes", "rules", "dkim", "dmarc", "uribl"), nil
	case "full":
		if env.Clamd == "" {
			return "", fmt.Errorf("profile full needs clamd (see --clamd)")
		}
		return dns + fmt.Sprintf("checks:\n  clamav:\n    addrs: [%q]\n", env.Clamd), nil
	}
	return "", fmt.Errorf("unknown profile %q (want core, envelope or full)", profile)
}
