package policy

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// checkNesting refuses a file whose expressions are deep enough to
// overflow a goroutine stack before it reaches hclsyntax.ParseConfig.
// Parsing and evaluating HCL recurse once per level of brackets, braces,
// parentheses, template interpolations and directives, and once per
// operator, conditional and traversal step of an expression (a chain of
// "+1" or "[*]" is a left-deep tree); a stack overflow is fatal in Go, so
// without this check a file of a few hundred KB would end the process, on
// a hot reload too. The lexer it uses instead is not recursive. Two
// bounds:
//   - maxNesting open brackets, braces, parentheses, interpolations and
//     if/for directives at any point;
//   - maxExprTokens operators, brackets and traversal steps pending at
//     any point: those of the item being read (an attribute, a body line,
//     a list element or a function argument) and of every item it is
//     nested in. Strings, numbers and names do not count, so a list of
//     100,000 host names is one short item per name.
//
// Lexical errors do not stop the count: ParseConfig parses on after them.
func checkNesting(src []byte, filename string) hcl.Diagnostics {
	toks, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	type frame struct {
		body bool // a body or object: a newline ends an item
		n    int  // tokens counted in the current item
	}
	stack := []frame{{body: true}}
	directives := 0 // open if/for template directives
	pending := 0    // the sum of every frame's n
	for i, t := range toks {
		top := &stack[len(stack)-1]
		switch t.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			if t.Type == hclsyntax.TokenTemplateControl && i+1 < len(toks) &&
				toks[i+1].Type == hclsyntax.TokenIdent {
				switch string(toks[i+1].Bytes) {
				case "if", "for":
					directives++
				case "endif", "endfor":
					directives = max(directives-1, 0)
				}
			}
			top.n++
			pending++
			stack = append(stack, frame{body: t.Type == hclsyntax.TokenOBrace})
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen,
			hclsyntax.TokenTemplateSeqEnd:
			if len(stack) > 1 {
				pending -= top.n
				stack = stack[:len(stack)-1]
			}
		case hclsyntax.TokenComma:
			pending -= top.n
			top.n = 0
		case hclsyntax.TokenNewline:
			if top.body {
				pending -= top.n
				top.n = 0
			}
		case hclsyntax.TokenComment:
			// A line comment takes the line's newline with it.
			if b := t.Bytes; top.body && len(b) > 0 && b[len(b)-1] == '\n' {
				pending -= top.n
				top.n = 0
			}
		case hclsyntax.TokenQuotedLit, hclsyntax.TokenStringLit, hclsyntax.TokenNumberLit,
			hclsyntax.TokenIdent, hclsyntax.TokenOQuote, hclsyntax.TokenCQuote,
			hclsyntax.TokenOHeredoc, hclsyntax.TokenCHeredoc,
			hclsyntax.TokenEqual, hclsyntax.TokenColon, hclsyntax.TokenEOF:
			// Values, names and separators: no recursion of their own.
		default:
			top.n++ // an operator, "?", ".", "*", "..." or "=>"
			pending++
		}
		if depth := len(stack) - 1 + directives; depth > maxNesting {
			return hcl.Diagnostics{errDiag(t.Range, "Configuration nested too deeply",
				fmt.Sprintf("%s nests brackets, braces, parentheses or templates more than %d levels deep here. A policy needs a few levels (policy, rule, list); look for a runaway generator or an unclosed bracket.", quote(filename), maxNesting))}
		}
		if pending > maxExprTokens {
			return hcl.Diagnostics{errDiag(t.Range, "Expression too long",
				fmt.Sprintf("%s has an expression with more than %d operators, brackets or traversal steps here. Values in a policy are lists of strings and numbers; split the expression, or look for a runaway generator.", quote(filename), maxExprTokens))}
		}
	}
	return nil
}
