package bench

import "fmt"

// ProfileConfig returns the configuration fragment of a named profile.
func ProfileConfig(profile string, env *Env) (string, error) {
	switch profile {
	case "core":
		// The bare gateway: no checks at all.
		return "", nil
	case "full":
		return "", nil
	}
	return "", fmt.Errorf("unknown profile %q (want core or full)", profile)
}
