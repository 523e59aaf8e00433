package rules

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// expr is a meta rule expression. eval returns a number: rule references
// are 1 or 0, comparisons and boolean operators give 1 or 0.
type expr interface {
	eval(m map[string]bool) float64
	refs(acc []string) []string
}

type refExpr string
type numExpr float64
type notExpr struct{ x expr }
type binExpr struct {
	op   string
	l, r expr
}

func (e refExpr) eval(m map[string]bool) float64 {
	if m[string(e)] {
		return 1
	}
	return 0
}
func (e refExpr) refs(acc []string) []string     { return append(acc, string(e)) }
func (e numExpr) eval(map[string]bool) float64   { return float64(e) }
func (e numExpr) refs(acc []string) []string     { return acc }
func (e notExpr) eval(m map[string]bool) float64 { return b2f(e.x.eval(m) == 0) }
func (e notExpr) refs(acc []string) []string     { return e.x.refs(acc) }
func (e binExpr) refs(acc []string) []string     { return e.r.refs(e.l.refs(acc)) }
func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (e binExpr) eval(m map[string]bool) float64 {
	l := e.l.eval(m)
	switch e.op {
	case "&&":
		if l == 0 {
			return 0
		}
		return b2f(e.r.eval(m) != 0)
	case "||":
		if l != 0 {
			return 1
		}
		return b2f(e.r.eval(m) != 0)
	}
	r := e.r.eval(m)
	switch e.op {
	case "+":
		return l + r
	case "-":
		return l - r
	case ">":
		return b2f(l > r)
	case ">=":
		return b2f(l >= r)
	case "<":
		return b2f(l < r)
	case "<=":
		return b2f(l <= r)
	case "==":
		return b2f(l == r)
	case "!=":
		return b2f(l != r)
	}
	return 0
}

// parseExpr parses: or := and ("||" and)*; and := cmp ("&&" cmp)*;
// cmp := sum (op sum)?; sum := unary (("+"|"-") unary)*;
// unary := "!" unary | "(" or ")" | NAME | NUMBER.
func parseExpr(s string) (expr, error) {
	toks, err := lex(s)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("empty expression")
	}
	p := &exprParser{toks: toks}
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.i != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q", p.toks[p.i])
	}
	return e, nil
}

func lex(s string) ([]string, error) {
	var toks []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case strings.HasPrefix(s[i:], "&&") || strings.HasPrefix(s[i:], "||") || strings.HasPrefix(s[i:], ">=") ||
			strings.HasPrefix(s[i:], "<=") || strings.HasPrefix(s[i:], "==") || strings.HasPrefix(s[i:], "!="):
			toks = append(toks, s[i:i+2])
			i += 2
		case strings.ContainsRune("()!+-<>", rune(c)):
			toks = append(toks, string(c))
			i++
		case c == '_' || unicode.IsLetter(rune(c)) || unicode.IsDigit(rune(c)) || c == '.':
			j := i
			for j < len(s) && (s[j] == '_' || s[j] == '.' || unicode.IsLetter(rune(s[j])) || unicode.IsDigit(rune(s[j]))) {
				j++
			}
			toks = append(toks, s[i:j])
			i = j
		default:
			return nil, fmt.Errorf("unexpected character %q", c)
		}
	}
	return toks, nil
}

type exprParser struct {
	toks []string
	i    int
}

func (p *exprParser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *exprParser) or() (expr, error) {
	l, err := p.and()
	for err == nil && p.peek() == "||" {
		p.i++
		var r expr
		r, err = p.and()
		l = binExpr{"||", l, r}
	}
	return l, err
}

func (p *exprParser) and() (expr, error) {
	l, err := p.cmp()
	for err == nil && p.peek() == "&&" {
		p.i++
		var r expr
		r, err = p.cmp()
		l = binExpr{"&&", l, r}
	}
	return l, err
}

func (p *exprParser) cmp() (expr, error) {
	l, err := p.sum()
	if err != nil {
		return nil, err
	}
	switch op := p.peek(); op {
	case ">", ">=", "<", "<=", "==", "!=":
		p.i++
		r, err := p.sum()
		if err != nil {
			return nil, err
		}
		return binExpr{op, l, r}, nil
	}
	return l, nil
}

func (p *exprParser) sum() (expr, error) {
	l, err := p.unary()
	for err == nil && (p.peek() == "+" || p.peek() == "-") {
		op := p.toks[p.i]
		p.i++
		var r expr
		r, err = p.unary()
		l = binExpr{op, l, r}
	}
	return l, err
}

func (p *exprParser) unary() (expr, error) {
	t := p.peek()
	switch {
	case t == "":
		return nil, fmt.Errorf("unexpected end of expression")
	case t == "!":
		p.i++
		x, err := p.unary()
		return notExpr{x}, err
	case t == "(":
		p.i++
		x, err := p.or()
		if err != nil {
			return nil, err
		}
		if p.peek() != ")" {
			return nil, fmt.Errorf("missing )")
		}
		p.i++
		return x, nil
	case t[0] >= '0' && t[0] <= '9':
		p.i++
		f, err := strconv.ParseFloat(t, 64)
		if err != nil {
			return nil, fmt.Errorf("bad number %q", t)
		}
		return numExpr(f), nil
	case nameRe.MatchString(t):
		p.i++
		return refExpr(t), nil
	}
	return nil, fmt.Errorf("unexpected %q", t)
}
