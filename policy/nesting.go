package policy

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// checkNesting refuses a file whose expressions nest deeper than
// maxNesting before it reaches hclsyntax.ParseConfig. That parser recurses
// once per level (brackets, braces, parentheses, template interpolations
// and if/for directives, and each unary "!" or "-" and conditional "?"),
// and a goroutine stack overflow is fatal in Go: without this check a
// 200 KB file of "[" would end the process, on a hot reload too. The
// lexer it uses instead is not recursive.
//
// Operators are counted as nesting until the end of the list element,
// argument or attribute they are in (a comma, or a newline in a body or
// object), which over-counts a chain of binary minuses; no configuration
// writes 64 of them.
func checkNesting(src []byte, filename string) hcl.Diagnostics {
	toks, diags := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil // ParseConfig reports them, with context
	}
	type frame struct {
		body bool // a body or object: a newline ends an item
		ops  int  // operators counted since the item began
	}
	stack := []frame{{body: true}}
	depth := 0 // len(stack)-1 + every frame's ops + open directives
	for i, t := range toks {
		top := &stack[len(stack)-1]
		switch t.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			if t.Type == hclsyntax.TokenTemplateControl && i+1 < len(toks) &&
				toks[i+1].Type == hclsyntax.TokenIdent {
				switch string(toks[i+1].Bytes) {
				case "if", "for":
					depth++
				case "endif", "endfor":
					depth--
				}
			}
			stack = append(stack, frame{body: t.Type == hclsyntax.TokenOBrace})
			depth++
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen,
			hclsyntax.TokenTemplateSeqEnd:
			if len(stack) > 1 {
				depth -= 1 + top.ops
				stack = stack[:len(stack)-1]
			}
		case hclsyntax.TokenQuestion, hclsyntax.TokenBang, hclsyntax.TokenMinus:
			top.ops++
			depth++
		case hclsyntax.TokenComma:
			depth -= top.ops
			top.ops = 0
		case hclsyntax.TokenNewline:
			if top.body {
				depth -= top.ops
				top.ops = 0
			}
		}
		if depth > maxNesting {
			return hcl.Diagnostics{errDiag(t.Range, "Configuration nested too deeply",
				fmt.Sprintf("%s nests brackets, braces, parentheses, templates or operators more than %d levels deep here. A policy needs a few levels (policy, rule, list); look for a runaway generator or an unclosed bracket.", quote(filename), maxNesting))}
		}
	}
	return nil
}
