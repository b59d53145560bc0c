package main

import (
	"strings"
	"testing"
)

// TestParseMaxDelete: --max-delete is "" (half of DST's paths: -1), N, or
// P% of DST's paths (0% is N = 0); anything else is a usage error that
// names what was given.
func TestParseMaxDelete(t *testing.T) {
	cases := []struct {
		in  string
		n   int64
		pct float64
		bad bool
	}{
		{in: "", n: -1},
		{in: "   ", n: -1},
		{in: "0", n: 0},
		{in: "10", n: 10},
		{in: " 7 ", n: 7},
		{in: "9223372036854775807", n: 1<<63 - 1},
		{in: "10%", pct: 10},
		{in: "0%", n: 0, pct: 0},
		{in: "100%", pct: 100},
		{in: "0.5%", pct: 0.5},
		{in: " 25% ", pct: 25},
		{in: "100.5%", bad: true},
		{in: "-1%", bad: true},
		{in: "-1", bad: true},
		{in: "abc", bad: true},
		{in: "5 %", bad: true},
		{in: "%", bad: true},
		{in: "10%%", bad: true},
		{in: "1.5", bad: true},
		{in: "9223372036854775808", bad: true},
		{in: "Inf%", bad: true},
		{in: "NaN%", bad: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			n, pct, err := parseMaxDelete(c.in)
			if c.bad {
				if err == nil {
					t.Fatalf("parseMaxDelete(%q) = %d, %v; want an error", c.in, n, pct)
				}
				if !strings.Contains(err.Error(), "--max-delete") || !strings.Contains(err.Error(), strings.TrimSpace(c.in)) {
					t.Errorf("message %q does not name the option and its value", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseMaxDelete(%q): %v", c.in, err)
			}
			if n != c.n || pct != c.pct {
				t.Fatalf("parseMaxDelete(%q) = %d, %v; want %d, %v", c.in, n, pct, c.n, c.pct)
			}
		})
	}
}
