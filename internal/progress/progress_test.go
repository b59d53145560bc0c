package progress

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// syncBuffer is a bytes.Buffer that may be read while the reporter writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestCount(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0"},
		{7, "7"},
		{999, "999"},
		{1000, "1,000"},
		{1234567, "1,234,567"},
		{100000, "100,000"},
		{-1234, "-1,234"},
		{-999, "-999"},
		{9223372036854775807, "9,223,372,036,854,775,807"},
		{-9223372036854775808, "-9,223,372,036,854,775,808"},
	}
	for _, tc := range tests {
		if got := Count(tc.in); got != tc.want {
			t.Errorf("Count(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestShort(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{5, "5"},
		{950, "950"},
		{999, "999"},
		{12.5, "12.5"},
		{0.5, "0.50"},
		{999.7, "1.00k"},
		{1000, "1.00k"},
		{1234, "1.23k"},
		{45100, "45.1k"},
		{100200, "100k"},
		{999999, "1.00M"},
		{1234567, "1.23M"},
		{3e9, "3.00G"},
		{-1234567, "-1.23M"},
	}
	for _, tc := range tests {
		if got := Short(tc.in); got != tc.want {
			t.Errorf("Short(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestBytes(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{512, "512 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{210 << 20, "210 MiB"},
		{1048575, "1.0 MiB"},
		{3221225472, "3.0 GiB"},
		{12*(1<<30) + 322122547, "12.3 GiB"},
		{5 << 40, "5.0 TiB"},
		{-1536, "-1.5 KiB"},
	}
	for _, tc := range tests {
		if got := Bytes(tc.in); got != tc.want {
			t.Errorf("Bytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "0.0s"},
		{1200 * time.Millisecond, "1.2s"},
		{12345 * time.Millisecond, "12.3s"},
		{59960 * time.Millisecond, "1m00s"},
		{100 * time.Second, "1m40s"},
		{184 * time.Second, "3m04s"},
		{3599600 * time.Millisecond, "1h00m"},
		{2*time.Hour + 5*time.Minute + 10*time.Second, "2h05m"},
		{50 * time.Hour, "50h00m"},
		{-1500 * time.Millisecond, "-1.5s"},
	}
	for _, tc := range tests {
		if got := Duration(tc.in); got != tc.want {
			t.Errorf("Duration(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestClock(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "0:00"},
		{42 * time.Second, "0:42"},
		{725 * time.Second, "12:05"},
		{3723 * time.Second, "1:02:03"},
	}
	for _, tc := range tests {
		if got := clock(tc.in); got != tc.want {
			t.Errorf("clock(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    Mode
		wantErr bool
	}{
		{"auto", Auto, false},
		{"", Auto, false},
		{"tty", TTY, false},
		{"TTY", TTY, false},
		{"plain", Plain, false},
		{"json", JSON, false},
		{"none", Quiet, false},
		{"quiet", Quiet, false},
		{" Plain ", Plain, false},
		{"fancy", Auto, true},
	}
	for _, tc := range tests {
		got, err := ParseMode(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseMode(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && got != tc.want {
			t.Errorf("ParseMode(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestAutoModeNonTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	tests := []struct {
		name string
		w    interface{ Write([]byte) (int, error) }
		mode Mode
		want Mode
	}{
		{"buffer auto", &bytes.Buffer{}, Auto, Plain},
		{"file auto", f, Auto, Plain},
		{"pipe auto", pw, Auto, Plain},
		{"buffer forced tty", &bytes.Buffer{}, TTY, TTY},
		{"buffer json", &bytes.Buffer{}, JSON, JSON},
	}
	for _, tc := range tests {
		r := New(tc.w, tc.mode, 0)
		if got := r.Mode(); got != tc.want {
			t.Errorf("%s: Mode() = %v, want %v", tc.name, got, tc.want)
		}
		r.Close()
	}
}

func TestPlainOutput(t *testing.T) {
	var buf syncBuffer
	r := New(&buf, Plain, 10*time.Millisecond)
	c := r.Phase("scan", "paths", "")
	c.Done.Store(1234)
	waitFor(t, "two periodic lines", func() bool {
		return strings.Count(buf.String(), "1.23k paths") >= 2
	})
	c.Done.Store(1234567)
	r.End()
	r.Close()

	out := buf.String()
	if strings.ContainsAny(out, "\r\x1b") {
		t.Errorf("plain output contains control characters: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) < 3 {
		t.Fatalf("want >= 3 lines, got %d: %q", len(lines), out)
	}
	withCount := 0
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "[0:00] scan ") || !strings.Contains(l, " paths  ") || !strings.HasSuffix(l, "paths/s  0:00") {
			t.Errorf("periodic line %q lacks elapsed prefix, phase, count, rate or clock", l)
		}
		if strings.Contains(l, "scan          1.23k paths  ") {
			withCount++
		}
		if strings.Contains(l, "ETA") || strings.Contains(l, "%") {
			t.Errorf("periodic line %q shows ETA/percent without totals", l)
		}
	}
	if withCount < 2 {
		t.Errorf("want >= 2 periodic lines with the count, got %d: %q", withCount, out)
	}
	final := lines[len(lines)-1]
	if !strings.HasPrefix(final, "[0:00] scan    done  1,234,567 paths  ") || !strings.HasSuffix(final, " paths/s") {
		t.Errorf("final line = %q", final)
	}
	if strings.Count(out, "done") != 1 {
		t.Errorf("want exactly one final line: %q", out)
	}
}

func TestJSONOutput(t *testing.T) {
	var buf syncBuffer
	r := New(&buf, JSON, 5*time.Millisecond)
	c := r.Phase("copy", "groups", "paths")
	c.Total.Store(100)
	c.Done.Store(40)
	c.TotalBytes.Store(1 << 30)
	c.Bytes.Store(1 << 28)
	c.Paths.Store(77)
	c.Errors.Store(2)
	waitFor(t, "a periodic JSON line", func() bool {
		return strings.Contains(buf.String(), `"errors":2,`)
	})
	c.Done.Store(100)
	c.Bytes.Store(1 << 30)
	r.End()
	r.Close()

	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) < 2 {
		t.Fatalf("want >= 2 lines, got %q", lines)
	}
	keys := []string{"phase", "unit", "done", "total", "paths", "bytes", "total_bytes",
		"rate", "bytes_rate", "eta_seconds", "errors", "elapsed_seconds", "final"}
	full := 0
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				t.Errorf("line %d lacks %q: %s", i, k, l)
			}
		}
		var o jsonLine
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatal(err)
		}
		last := i == len(lines)-1
		if o.Phase != "copy" || o.Unit != "groups" || o.Secondary != "paths" || o.Final != last || o.ElapsedSeconds < 0 {
			t.Errorf("line %d has wrong fields: %+v", i, o)
		}
		if last {
			if o.Done != 100 || o.Total != 100 || o.Bytes != 1<<30 || o.TotalBytes != 1<<30 ||
				o.Paths != 77 || o.Errors != 2 || o.ETASeconds != -1 || o.Rate <= 0 || o.BytesRate <= 0 {
				t.Errorf("final object wrong: %+v", o)
			}
		} else if o.Done == 40 && o.Total == 100 && o.Bytes == 1<<28 && o.TotalBytes == 1<<30 &&
			o.Paths == 77 && o.Errors == 2 && o.ETASeconds >= 0 && o.Rate > 0 {
			full++
		}
	}
	if full == 0 {
		t.Errorf("no periodic object carries all counters: %q", lines)
	}
}

// setupPhase returns a reporter (no ticker) with an open phase whose clock
// starts at t0, for deterministic rendering at chosen instants.
func setupPhase(t *testing.T, unit, secondary string) (*Reporter, *Counters, time.Time) {
	t.Helper()
	var buf bytes.Buffer
	r := New(&buf, Quiet, 0)
	t.Cleanup(r.Close)
	c := r.Phase("copy", unit, secondary)
	t0 := time.Now()
	r.cur.start = t0
	r.cur.samples = []sample{{t: t0}}
	return r, c, t0
}

func TestETAOnlyWithTotals(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name                    string
		done, total             int64
		bytes, totalBytes       int64
		at                      time.Duration
		wantETA                 string // "" = no ETA expected
		wantPct                 string // "" = no percentage expected
		wantRate, wantBytesRate string
	}{
		{name: "no totals", done: 400, at: 10 * time.Second, wantRate: "40 groups/s"},
		{name: "no totals bytes", done: 400, bytes: 250 * mib, at: 10 * time.Second,
			wantRate: "40 groups/s", wantBytesRate: "25.0 MiB/s"},
		{name: "unit total", done: 400, total: 1000, at: 10 * time.Second,
			wantETA: "ETA 15.0s", wantPct: " 40%", wantRate: "40 groups/s"},
		{name: "byte total preferred", done: 90, total: 100, bytes: 250 * mib, totalBytes: 1000 * mib,
			at: 10 * time.Second, wantETA: "ETA 30.0s", wantPct: " 25%", wantBytesRate: "25.0 MiB/s"},
		{name: "byte total, bytes stalled, units known", done: 50, total: 100, totalBytes: 1000 * mib,
			at: 10 * time.Second, wantETA: "ETA 10.0s", wantPct: "  0%"},
		{name: "total but zero rate", done: 0, total: 1000, at: 10 * time.Second, wantPct: "  0%",
			wantRate: "0 groups/s"},
		{name: "no time elapsed", done: 0, total: 1000, at: 0, wantPct: "  0%", wantRate: "- groups/s"},
		{name: "long eta", done: 1, total: 1000, at: 1 * time.Second, wantETA: "ETA 16m39s", wantPct: "  0%"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, c, t0 := setupPhase(t, "groups", "")
			c.Done.Store(tc.done)
			c.Total.Store(tc.total)
			c.Bytes.Store(tc.bytes)
			c.TotalBytes.Store(tc.totalBytes)
			line := r.liveLine(t0.Add(tc.at), 0)
			if tc.wantETA == "" && strings.Contains(line, "ETA") {
				t.Errorf("unexpected ETA in %q", line)
			}
			if tc.wantETA != "" && !strings.Contains(line, tc.wantETA) {
				t.Errorf("want %q in %q", tc.wantETA, line)
			}
			if tc.wantPct == "" && strings.Contains(line, "%") {
				t.Errorf("unexpected percentage in %q", line)
			}
			if tc.wantPct != "" && !strings.HasPrefix(line, "copy    "+tc.wantPct+"  ") {
				t.Errorf("want percentage %q at start of %q", tc.wantPct, line)
			}
			if tc.wantRate != "" && !strings.Contains(line, "  "+tc.wantRate) {
				t.Errorf("want rate %q in %q", tc.wantRate, line)
			}
			if tc.wantBytesRate != "" && !strings.Contains(line, "  "+tc.wantBytesRate) {
				t.Errorf("want byte rate %q in %q", tc.wantBytesRate, line)
			}
			o := r.jsonObject(t0.Add(tc.at), false)
			if (o.ETASeconds >= 0) != (tc.wantETA != "") {
				t.Errorf("json eta_seconds = %v, want ETA %v", o.ETASeconds, tc.wantETA != "")
			}
		})
	}
}

func TestLiveLineFields(t *testing.T) {
	r, c, t0 := setupPhase(t, "groups", "paths")
	c.Total.Store(3000000)
	c.Done.Store(1230000)
	c.Paths.Store(3510000)
	c.Bytes.Store(12*(1<<30) + 322122547)
	c.Errors.Store(3)
	got := r.liveLine(t0.Add(42*time.Second), 0)
	want := "copy     41%  1.23M/3.00M groups  3.51M paths  12.3 GiB  300 MiB/s  29.3k groups/s  ETA 1m00s  errors 3  0:42"
	if got != want {
		t.Errorf("liveLine:\n got %q\nwant %q", got, want)
	}
	fits := []struct {
		width int
		want  string
	}{
		{200, "copy     41%  1.23M/3.00M groups  3.51M paths  12.3 GiB  300 MiB/s  29.3k groups/s  ETA 1m00s  errors 3  0:42"},
		{99, "copy     41%  1.23M/3.00M groups  12.3 GiB  300 MiB/s  29.3k groups/s  ETA 1m00s  errors 3  0:42"},
		{80, "copy     41%  1.23M/3.00M groups  12.3 GiB  300 MiB/s  ETA 1m00s  errors 3  0:42"},
		{64, "copy     41%  1.23M/3.00M groups  300 MiB/s  ETA 1m00s  errors 3"},
		{45, "copy     41%  1.23M/3.00M groups  errors 3"},
		{20, "copy     41%  1.23M/"},
	}
	for _, tc := range fits {
		got := r.liveLine(t0.Add(42*time.Second), tc.width)
		if got != tc.want {
			t.Errorf("liveLine width %d:\n got %q\nwant %q", tc.width, got, tc.want)
		}
		if n := utf8.RuneCountInString(got); n > tc.width {
			t.Errorf("liveLine width %d has %d runes", tc.width, n)
		}
	}
	final := r.finalLine(t0.Add(42 * time.Second))
	want = "copy    done  1,230,000/3,000,000 groups  3,510,000 paths  12.3 GiB  42.0s  29.3k groups/s  300 MiB/s  errors 3"
	if final != want {
		t.Errorf("finalLine:\n got %q\nwant %q", final, want)
	}
}

func TestSlidingWindowRate(t *testing.T) {
	r, c, t0 := setupPhase(t, "paths", "")
	// 100 paths/s for 10s, then stalled for 10s.
	for s := 1; s <= 20; s++ {
		c.Done.Store(int64(min(s, 10) * 100))
		r.cur.addSample(t0.Add(time.Duration(s) * time.Second))
		if s == 10 {
			if got := r.snap(t0.Add(10*time.Second), false).rate; got != 100 {
				t.Errorf("rate at 10s = %v, want 100", got)
			}
		}
	}
	now := t0.Add(20 * time.Second)
	if got := r.snap(now, false).rate; got != 0 {
		t.Errorf("windowed rate after stall = %v, want 0", got)
	}
	if got := r.snap(now, true).rate; got != 50 {
		t.Errorf("final (average) rate = %v, want 50", got)
	}
	if n := len(r.cur.samples); n > 7 {
		t.Errorf("window keeps %d samples, want <= 7", n)
	}
	if span := now.Sub(r.cur.samples[0].t); span < rateWindow || span > 2*rateWindow {
		t.Errorf("window spans %v", span)
	}
}

func TestTTYLogf(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, TTY, 0)
	c := r.Phase("copy", "groups", "")
	c.Done.Store(5)
	r.Logf("warning: %s\n", "disk slow")
	r.End()
	r.Close()
	out := buf.String()

	if !strings.HasPrefix(out, "\rcopy ") {
		t.Errorf("TTY output should start with a live line: %q", out)
	}
	msg := strings.Index(out, "\r\x1b[Kwarning: disk slow\n")
	if msg < 0 {
		t.Fatalf("message not preceded by line clearing: %q", out)
	}
	redraw := strings.Index(out[msg:], "\n\rcopy ")
	if redraw < 0 {
		t.Errorf("live line not redrawn after message: %q", out)
	}
	final := strings.LastIndex(out, "\rcopy    done  5 groups  ")
	if final < msg || !strings.HasSuffix(out, "\x1b[K\n") {
		t.Errorf("final line missing or misplaced: %q", out)
	}
	if strings.Count(out, "warning") != 1 {
		t.Errorf("message printed %d times", strings.Count(out, "warning"))
	}
}

func TestTTYTruncation(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, TTY, 0)
	c := r.Phase(strings.Repeat("x", 80), "groups", "paths")
	c.Done.Store(123456)
	c.Total.Store(999999)
	c.Paths.Store(5)
	c.Bytes.Store(1 << 40)
	c.TotalBytes.Store(3 << 40)
	c.Errors.Store(12)
	r.Logf("note")
	r.Close()
	out := buf.String()
	draws := 0
	for _, seg := range strings.Split(out, "\r") {
		seg, ok := strings.CutSuffix(seg, "\x1b[K")
		if !ok || strings.Contains(seg, " done ") || seg == "" {
			continue // message clearing, final line (not truncated)
		}
		draws++
		if n := utf8.RuneCountInString(seg); n > defaultWidth-1 {
			t.Errorf("live line has %d runes, want <= %d: %q", n, defaultWidth-1, seg)
		}
	}
	if draws < 2 {
		t.Errorf("want >= 2 live draws, got %d: %q", draws, out)
	}
}

func TestLogfModes(t *testing.T) {
	tests := []struct {
		mode  Mode
		check func(out string) bool
	}{
		{Plain, func(out string) bool {
			return strings.Contains(out, "\nhello 42\n") || strings.HasPrefix(out, "hello 42\n")
		}},
		{Quiet, func(out string) bool { return out == "hello 42\n" }},
		{JSON, func(out string) bool {
			for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "hello 42" && len(m) == 1 {
					return true
				}
			}
			return false
		}},
	}
	for _, tc := range tests {
		t.Run(tc.mode.String(), func(t *testing.T) {
			var buf bytes.Buffer
			r := New(&buf, tc.mode, time.Hour)
			c := r.Phase("scan", "paths", "")
			c.Done.Add(3)
			r.Logf("hello %d", 42)
			r.End()
			r.Close()
			if out := buf.String(); !tc.check(out) {
				t.Errorf("unexpected output %q", out)
			}
		})
	}
}

func TestPhaseEndsPrevious(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, Plain, time.Hour)
	c := r.Phase("scan", "paths", "")
	c.Done.Store(10)
	c = r.Phase("sort", "records", "")
	c.Done.Store(20)
	r.End()
	r.End() // no open phase: no output
	r.Close()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 final lines, got %q", lines)
	}
	if !strings.Contains(lines[0], "scan    done  10 paths") || !strings.Contains(lines[1], "sort    done  20 records") {
		t.Errorf("final lines = %q", lines)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	for _, mode := range []Mode{TTY, Plain, JSON} {
		t.Run(mode.String(), func(t *testing.T) {
			var buf syncBuffer
			r := New(&buf, mode, time.Millisecond)
			c := r.Phase("copy", "groups", "paths")
			c.Total.Store(8 * 20000)
			const workers, iters = 8, 20000
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < iters; i++ {
						c.Done.Add(1)
						c.Bytes.Add(10)
						c.Paths.Add(2)
						if i%5000 == 0 {
							c.Errors.Add(1)
							r.Logf("worker error %d", i)
						}
					}
				}()
			}
			wg.Wait()
			r.End()
			r.Close()
			out := buf.String()
			if mode == JSON {
				lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
				var o jsonLine
				if err := json.Unmarshal([]byte(lines[len(lines)-1]), &o); err != nil {
					t.Fatal(err)
				}
				if !o.Final || o.Done != workers*iters || o.Bytes != 10*workers*iters ||
					o.Paths != 2*workers*iters || o.Errors != workers*4 {
					t.Errorf("final object = %+v", o)
				}
			} else if !strings.Contains(out, "copy    done  160,000 groups  320,000 paths  1.5 MiB  ") ||
				!strings.Contains(out, "errors 32") {
				t.Errorf("final line missing or wrong: %q", out[max(0, len(out)-300):])
			}
		})
	}
}

func TestCloseIdempotent(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, Plain, time.Hour)
	c := r.Phase("hash", "files", "")
	c.Done.Store(9)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.Close() }()
	}
	wg.Wait()
	r.Close()
	select {
	case <-r.done:
	default:
		t.Fatal("ticker goroutine still running after Close")
	}
	out := buf.String()
	if strings.Count(out, "hash    done  9 files") != 1 {
		t.Errorf("Close should end the open phase exactly once: %q", out)
	}
	// The reporter stays usable without periodic output.
	c = r.Phase("late", "files", "")
	c.Done.Store(1)
	r.Logf("after close")
	r.End()
	if out := buf.String(); !strings.Contains(out, "after close\n") || !strings.Contains(out, "late    done  1 files") {
		t.Errorf("reporter unusable after Close: %q", out)
	}

	q := New(&buf, Quiet, 0)
	q.Close()
	q.Close()
}
