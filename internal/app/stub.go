//go:build !wip

package app

import (
	"context"
	"errors"

	"moat.dev/moat/internal/config"
)

// App is a placeholder until the components are wired (build tag wip).
type App struct{}

func New(ctx context.Context, cfg *config.Config) (*App, error) {
	return nil, errors.New("serve: not wired yet")
}

func (a *App) Run(ctx context.Context) error { return nil }
