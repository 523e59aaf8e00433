package rules

import (
	_ "embed" // the shipped rules file
	"strings"
)

// Default is the text of the rules file shipped with Moat.
//
//go:embed moat.rules
var Default string

// DefaultName is the name the shipped file has in error messages.
const DefaultName = "moat.rules"

// ParseDefault compiles the shipped rules.
func ParseDefault() (*Set, error) { return Parse(DefaultName, strings.NewReader(Default)) }

// Load compiles the shipped rules followed by the local files, in order.
// Local files may add rules and override scores and descriptions of
// earlier ones (score NAME 0 disables a rule); they may not redefine a rule.
func Load(files ...string) (*Set, error) {
	p := newParser()
	if err := p.parse(DefaultName, strings.NewReader(Default)); err != nil {
		return nil, err
	}
	if err := p.parseFiles(files); err != nil {
		return nil, err
	}
	return p.compile()
}
