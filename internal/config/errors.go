package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// keyPaths maps each line of a YAML document to the dotted path of the key
// (or list item) written on it, e.g. 7 → "smtp.max_recipients", so decode
// errors, which yaml.v3 reports by line, can name the key.
func linePaths(data []byte) map[int]string {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return nil
	}
	out := map[int]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				out[k.Line] = p
				if v.Line != k.Line {
					out[v.Line] = p
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := path + "[" + strconv.Itoa(i) + "]"
				if _, ok := out[c.Line]; !ok {
					out[c.Line] = p
				}
				walk(c, p)
			}
		}
	}
	walk(doc.Content[0], "")
	return out
}

var (
	reUnknown = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)
	reLine    = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// explain rewrites one yaml.v3 decode error so it names the key.
func explain(e string, paths map[int]string) string {
	if m := reUnknown.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		if where := paths[line]; where != "" && where != m[2] {
			return fmt.Sprintf("line %s: unknown key %q (at %s)", m[1], m[2], where)
		}
		return fmt.Sprintf("line %s: unknown key %q", m[1], m[2])
	}
	if m := reLine.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		if where := paths[line]; where != "" {
			msg := strings.Replace(m[2], "cannot unmarshal", "cannot read", 1)
			return fmt.Sprintf("line %s: %s: %s", m[1], where, msg)
		}
	}
	return e
}

// prefixAll puts prefix in front of every line of a (possibly joined)
// validation error, so each names its section.
func prefixAll(prefix string, err error) error {
	if err == nil {
		return nil
	}
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return fmt.Errorf("%s", strings.Join(lines, "\n"))
}

var reDuration = regexp.MustCompile(`^time: (invalid duration|unknown unit|missing unit).*"([^"]*)"`) // the last quoted string: the value

// explainValue names the key of a value error that yaml.v3 reports without
// a line (a TextUnmarshaler such as a duration refusing its text).
func explainValue(e string, data []byte, paths map[int]string) string {
	m := reDuration.FindStringSubmatch(e)
	if m == nil {
		return e
	}
	for i, line := range strings.Split(string(data), "\n") {
		if _, v, ok := strings.Cut(line, ":"); ok && strings.Trim(strings.TrimSpace(v), `"'`) == m[2] {
			if p := paths[i+1]; p != "" {
				return fmt.Sprintf("line %d: %s: %q is not a duration (write e.g. 30s, 5m, 4h)", i+1, p, m[2])
			}
		}
	}
	return e
}
