//go:build wip

package app

import (
	"context"

	"moat.dev/moat/internal/pipeline"
)

// buildChecks is Moat's plugin table: the checks in the order they run
// within each phase. Order is data, here, in one place.
func (a *App) buildChecks(ctx context.Context) ([]pipeline.Check, error) {
	var checks []pipeline.Check
	return checks, nil
}
