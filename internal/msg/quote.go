// Package msg owns how hlcp writes names into its messages and logs: one
// line each, a name one word, and nothing a reader (or a program fed a
// log line) could take for something else.
package msg

import (
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Quote returns p as is when it is printable UTF-8 without spaces, and
// Go-quoted otherwise, so that every message is one line, a name is one
// word of it, and names with newlines, control characters or invalid bytes
// stay unambiguous: a line of a log that names them can never be taken for
// anything but that log's line (a crontab entry, a shell command).
func Quote(p string) string {
	if p == "" {
		return "."
	}
	if !utf8.ValidString(p) {
		return strconv.Quote(p)
	}
	for _, r := range p {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' || r == '\\' {
			return strconv.Quote(p)
		}
	}
	return p
}

// QuoteList quotes up to max names (see Quote) and says how many more
// there are.
func QuoteList(names []string, max int) string {
	var b []byte
	for i, n := range names {
		if i == max {
			b = fmt.Appendf(b, " and %d more", len(names)-max)
			break
		}
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, Quote(n)...)
	}
	return string(b)
}
