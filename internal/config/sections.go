package config

import (
	"encoding/json"
	"io"

	"moat.dev/moat/internal/policy"
)

// Sections are the settings owned by the individual packages, inlined at
// the top level of the file.
type Sections struct {
}

func defaultSections() Sections { return Sections{} }

func (s *Sections) fill(c *Config) {}

func (s *Sections) validate() error { return nil }

func jsonPolicy(p *policy.Policy) (string, error) {
	b, err := json.Marshal(p)
	return string(b), err
}

func ioEOF() error { return io.EOF }
