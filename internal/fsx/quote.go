package fsx

import (
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
