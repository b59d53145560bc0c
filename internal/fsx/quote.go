package fsx

import (
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Quote returns p as is when it is printable UTF-8 without spaces at its
// ends, and Go-quoted otherwise, so that every message is one line and
// names with newlines or invalid bytes stay unambiguous.
func Quote(p string) string {
	if p == "" {
		return "."
	}
	if !utf8.ValidString(p) {
		return strconv.Quote(p)
	}
	for _, r := range p {
		if !unicode.IsPrint(r) || r == '"' || r == '\\' {
			return strconv.Quote(p)
		}
	}
	if p[0] == ' ' || p[len(p)-1] == ' ' {
		return strconv.Quote(p)
	}
	return p
}
