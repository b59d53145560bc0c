package msg

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestQuote(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", "."},
		{"a/b c", `"a/b c"`},
		{"* * * * * root touch /tmp/x", `"* * * * * root touch /tmp/x"`},
		{"tab\there", `"tab\there"`},
		{"nbsp\u00a0x", `"nbsp\u00a0x"`},
		{"plain/path_with-dots.txt", "plain/path_with-dots.txt"},
		{"caf\xe9", `"caf\xe9"`},
		{"new\nline", `"new\nline"`},
		{" lead", `" lead"`},
		{"ünïcode/ok", "ünïcode/ok"},
		{`quo"te`, `"quo\"te"`},
	}
	for _, c := range cases {
		if got := Quote(c.in); got != c.want {
			t.Errorf("Quote(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

// FuzzQuote: every message stays on one line and valid UTF-8.
func FuzzQuote(f *testing.F) {
	f.Add("a\nb")
	f.Add("\xff\xfe")
	f.Fuzz(func(t *testing.T, s string) {
		q := Quote(s)
		if strings.ContainsAny(q, "\n\r") || !utf8.ValidString(q) {
			t.Fatalf("Quote(%q) = %q", s, q)
		}
		// A name left bare is one word: no space of any kind in it.
		if !strings.HasPrefix(q, `"`) && strings.IndexFunc(q, unicode.IsSpace) >= 0 {
			t.Fatalf("Quote(%q) = %q has a space", s, q)
		}
	})
}
