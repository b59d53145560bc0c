// Package progress renders live progress of hlcp's phases (scan, sort,
// copy, finish, compare, hash ...).
//
// Worker goroutines update the atomic fields of a phase's Counters at any
// rate; a single ticker goroutine owned by the Reporter samples them and
// renders either a self-redrawing terminal line (TTY), periodic text lines
// (Plain), periodic JSON objects (JSON) or nothing (Quiet). All output goes
// to one writer under a mutex.
package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"hlcp/internal/testhook"
)

// Mode selects how progress is rendered.
type Mode int

const (
	Auto  Mode = iota // TTY when the writer is a terminal, else Plain
	TTY               // one line redrawn in place every 200ms
	Plain             // one text line per interval, no control characters
	JSON              // one JSON object per line per interval
	Quiet             // no progress; Logf still prints messages
)

func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case TTY:
		return "tty"
	case Plain:
		return "plain"
	case JSON:
		return "json"
	case Quiet:
		return "none"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "auto" (or ""), "tty", "plain", "json", "none"/"quiet".
// Matching is case-insensitive.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "auto", "":
		return Auto, nil
	case "tty":
		return TTY, nil
	case "plain":
		return Plain, nil
	case "json":
		return JSON, nil
	case "none", "quiet":
		return Quiet, nil
	}
	return Auto, fmt.Errorf("progress: unknown mode %q (want auto, tty, plain, json or none)", s)
}

// Counters of one phase; workers update them with atomic ops.
type Counters struct {
	Done       atomic.Int64 // primary work units done (paths, records, groups, dirs...)
	Total      atomic.Int64 // known total of primary units, 0 = unknown
	Bytes      atomic.Int64 // data bytes done
	TotalBytes atomic.Int64 // 0 = unknown
	Paths      atomic.Int64 // secondary count shown when non-zero (e.g. paths while Done counts groups)
	Errors     atomic.Int64
}

const (
	ttyInterval     = 200 * time.Millisecond
	defaultInterval = 5 * time.Second
	defaultWidth    = 100
	rateWindow      = 5 * time.Second // rates span the last ~5s (plus one tick)
)

// sample is one observation of a phase's counters, used for windowed rates.
type sample struct {
	t     time.Time
	done  int64
	bytes int64
}

type phase struct {
	name, unit, secondary string
	c                     *Counters
	start                 time.Time
	lastPrint             time.Time
	samples               []sample // oldest first; samples[0] is the rate base
}

// Reporter renders progress of one phase at a time. All methods are safe
// for concurrent use.
type Reporter struct {
	mu       sync.Mutex
	w        io.Writer
	mode     Mode
	interval time.Duration
	fd       int // terminal fd for width queries, -1 if none
	start    time.Time
	cur      *phase

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// New creates a Reporter writing to w. Mode Auto picks TTY when w is an
// *os.File referring to a terminal, else Plain. interval is the Plain/JSON
// period (0 = 5s); TTY redraws every 200ms. Call Close when done.
func New(w io.Writer, mode Mode, interval time.Duration) *Reporter {
	if interval <= 0 {
		interval = defaultInterval
	}
	r := &Reporter{
		w:        w,
		mode:     mode,
		interval: interval,
		fd:       -1,
		start:    time.Now(),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if f, ok := w.(*os.File); ok && f != nil {
		if fd := int(f.Fd()); isTerminal(fd) {
			r.fd = fd
		}
	}
	if r.mode == Auto {
		if r.fd >= 0 {
			r.mode = TTY
		} else {
			r.mode = Plain
		}
	}
	if r.mode == Quiet {
		close(r.done)
		return r
	}
	tick := ttyInterval
	if r.mode != TTY && r.interval < tick {
		tick = r.interval
	}
	go r.loop(tick)
	return r
}

// Mode reports the effective mode (never Auto).
func (r *Reporter) Mode() Mode { return r.mode }

func (r *Reporter) loop(tick time.Duration) {
	defer close(r.done)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.tick(tick)
		}
	}
}

func (r *Reporter) tick(tick time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.cur
	if p == nil {
		return
	}
	now := time.Now()
	p.addSample(now)
	switch r.mode {
	case TTY:
		r.drawLocked(now)
	case Plain, JSON:
		// Tolerate ticker jitter so that a period equal to the tick does
		// not skip every other tick.
		if now.Sub(p.lastPrint) >= r.interval-tick/2 {
			p.lastPrint = now
			r.printLocked(now, false)
		}
	}
}

func (p *phase) addSample(now time.Time) {
	p.samples = append(p.samples, sample{t: now, done: p.c.Done.Load(), bytes: p.c.Bytes.Load()})
	// Keep samples[0] as the newest sample at least rateWindow old.
	drop := 0
	for drop+1 < len(p.samples) && !p.samples[drop+1].t.After(now.Add(-rateWindow)) {
		drop++
	}
	if drop > 0 {
		n := copy(p.samples, p.samples[drop:])
		p.samples = p.samples[:n]
	}
}

// Phase starts a phase; unit names the primary counter ("paths",
// "records", "groups", "dirs"), secondary names the Paths counter ("paths")
// or "". Only one phase is live at a time; starting a phase ends the
// previous one if still open. The returned Counters are never nil.
func (r *Reporter) Phase(name, unit, secondary string) *Counters {
	testhook.PhaseStarted(name)
	c := new(Counters)
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		r.endLocked(now)
	}
	r.cur = &phase{
		name:      name,
		unit:      unit,
		secondary: secondary,
		c:         c,
		start:     now,
		lastPrint: now,
		samples:   []sample{{t: now}},
	}
	if r.mode == TTY {
		r.drawLocked(now)
	}
	return c
}

// End prints the phase's final line (TTY and Plain: e.g.
// "scan    done  1,234,567 paths  12.3s  100.2k paths/s"; JSON: an object
// with "final":true; Quiet: nothing). It is a no-op without an open phase.
func (r *Reporter) End() {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		r.endLocked(now)
	}
}

func (r *Reporter) endLocked(now time.Time) {
	switch r.mode {
	case TTY:
		r.writeLocked("\r" + r.finalLine(now) + "\x1b[K\n")
	case Plain, JSON:
		r.printLocked(now, true)
	}
	r.cur = nil
}

// Logf prints a message line without corrupting the live line. TTY: the
// live line is cleared, the message printed and the line redrawn. Plain and
// Quiet: the message as a line. JSON: a {"msg":...} object.
func (r *Reporter) Logf(format string, args ...any) {
	msg := strings.TrimRight(fmt.Sprintf(format, args...), "\n")
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.mode {
	case TTY:
		r.writeLocked("\r\x1b[K" + msg + "\n")
		if r.cur != nil {
			r.drawLocked(now)
		}
	case JSON:
		b, err := json.Marshal(struct {
			Msg string `json:"msg"`
		}{msg})
		if err == nil {
			r.writeLocked(string(b) + "\n")
		}
	default:
		r.writeLocked(msg + "\n")
	}
}

// Close stops the ticker goroutine and ends an open phase. Idempotent.
// Phase, End and Logf keep working afterwards, without periodic output.
func (r *Reporter) Close() {
	r.closeOnce.Do(func() {
		if r.mode != Quiet {
			close(r.stop)
		}
		<-r.done
		r.End()
	})
}

func (r *Reporter) writeLocked(s string) {
	_, _ = io.WriteString(r.w, s) // progress output is best effort
}

func (r *Reporter) width() int {
	if r.fd >= 0 {
		if w := termWidth(r.fd); w > 0 {
			return w
		}
	}
	return defaultWidth
}

func (r *Reporter) drawLocked(now time.Time) {
	line := r.liveLine(now, r.width()-1)
	r.writeLocked("\r" + line + "\x1b[K")
}

func (r *Reporter) printLocked(now time.Time, final bool) {
	switch r.mode {
	case Plain:
		var line string
		if final {
			line = r.finalLine(now)
		} else {
			line = r.liveLine(now, 0)
		}
		r.writeLocked("[" + clock(now.Sub(r.start)) + "] " + line + "\n")
	case JSON:
		b, err := json.Marshal(r.jsonObject(now, final))
		if err == nil {
			r.writeLocked(string(b) + "\n")
		}
	}
}

// truncate shortens s to at most n runes.
func truncate(s string, n int) string {
	if n < 1 {
		n = 1
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// snapshot is the state of the current phase at one instant.
type snapshot struct {
	done, total, bytes, totalBytes, paths, errors int64

	elapsed         time.Duration
	rate, bytesRate float64 // per second
	rateOK          bool    // rates are meaningful (some time has passed)
	pct             float64 // 0..100
	pctOK           bool
	eta             time.Duration
	etaOK           bool
}

// snap reads the counters of the current phase. Live rates span the
// sliding window; final rates are averages over the whole phase.
func (r *Reporter) snap(now time.Time, final bool) snapshot {
	p := r.cur
	c := p.c
	s := snapshot{
		done:       c.Done.Load(),
		total:      c.Total.Load(),
		bytes:      c.Bytes.Load(),
		totalBytes: c.TotalBytes.Load(),
		paths:      c.Paths.Load(),
		errors:     c.Errors.Load(),
		elapsed:    now.Sub(p.start),
	}
	base := sample{t: p.start}
	if !final && len(p.samples) > 0 {
		base = p.samples[0]
	}
	if dt := now.Sub(base.t).Seconds(); dt > 0 {
		s.rateOK = true
		s.rate = math.Max(0, float64(s.done-base.done)/dt)
		s.bytesRate = math.Max(0, float64(s.bytes-base.bytes)/dt)
	}
	// Percentage and ETA prefer bytes (time tracks data volume), falling
	// back to units when the byte total is unknown or bytes do not move.
	switch {
	case s.totalBytes > 0:
		s.pct, s.pctOK = pct(s.bytes, s.totalBytes), true
	case s.total > 0:
		s.pct, s.pctOK = pct(s.done, s.total), true
	}
	if s.rateOK {
		switch {
		case s.totalBytes > 0 && s.bytesRate > 0:
			s.eta, s.etaOK = eta(s.totalBytes-s.bytes, s.bytesRate), true
		case s.total > 0 && s.rate > 0:
			s.eta, s.etaOK = eta(s.total-s.done, s.rate), true
		}
	}
	return s
}

func pct(done, total int64) float64 {
	return math.Min(100, math.Max(0, 100*float64(done)/float64(total)))
}

func eta(remaining int64, rate float64) time.Duration {
	if remaining <= 0 {
		return 0
	}
	sec := float64(remaining) / rate
	if sec > float64(math.MaxInt64/int64(time.Second)) {
		sec = float64(math.MaxInt64 / int64(time.Second))
	}
	return time.Duration(sec * float64(time.Second))
}

func (p *phase) secondaryName() string {
	if p.secondary != "" {
		return p.secondary
	}
	return "paths"
}

// part is one field of the live line. Fields with a higher drop value are
// removed first when the line does not fit the terminal; 0 is never removed.
type part struct {
	text string
	drop int
}

// liveLine renders e.g.
// "copy     41%  1.23M/3.00M groups  3.51M paths  12.3 GiB/30.0 GiB  210 MiB/s  45.1k groups/s  ETA 1m40s  errors 3  0:42"
// If width > 0 the least important fields are left out until the line has
// at most width runes (then it is cut as a last resort).
func (r *Reporter) liveLine(now time.Time, width int) string {
	p := r.cur
	s := r.snap(now, false)
	pctStr := ""
	if s.pctOK {
		pctStr = fmt.Sprintf("%d%%", int(s.pct))
	}
	parts := make([]part, 0, 10)
	parts = append(parts, part{fmt.Sprintf("%-7s %4s", p.name, pctStr), 0})
	cnt := Short(float64(s.done))
	if s.total > 0 {
		cnt += "/" + Short(float64(s.total))
	}
	parts = append(parts, part{cnt + " " + p.unit, 0})
	if s.paths != 0 {
		parts = append(parts, part{Short(float64(s.paths)) + " " + p.secondaryName(), 6})
	}
	hasBytes := s.bytes != 0 || s.totalBytes > 0
	if hasBytes {
		b := Bytes(s.bytes)
		if s.totalBytes > 0 {
			b += "/" + Bytes(s.totalBytes)
		}
		parts = append(parts, part{b, 3})
		br := "- B/s"
		if s.rateOK {
			br = Bytes(int64(s.bytesRate)) + "/s"
		}
		parts = append(parts, part{br, 2})
	}
	ur := "- " + p.unit + "/s"
	if s.rateOK {
		ur = Short(s.rate) + " " + p.unit + "/s"
	}
	if hasBytes {
		parts = append(parts, part{ur, 5}) // the byte rate matters more
	} else {
		parts = append(parts, part{ur, 2})
	}
	if s.etaOK {
		parts = append(parts, part{"ETA " + Duration(s.eta), 1})
	}
	if s.errors != 0 {
		parts = append(parts, part{"errors " + Count(s.errors), 0})
	}
	parts = append(parts, part{clock(s.elapsed), 4})
	return fit(parts, width)
}

// fit joins parts with two spaces, dropping the parts with the highest drop
// value while the result is wider than width (width <= 0: no limit).
func fit(parts []part, width int) string {
	join := func() string {
		texts := make([]string, len(parts))
		for i, p := range parts {
			texts[i] = p.text
		}
		return strings.Join(texts, "  ")
	}
	line := join()
	if width <= 0 {
		return line
	}
	for utf8.RuneCountInString(line) > width {
		worst := -1
		for i, p := range parts {
			if p.drop > 0 && (worst < 0 || p.drop > parts[worst].drop) {
				worst = i
			}
		}
		if worst < 0 {
			return truncate(line, width)
		}
		parts = append(parts[:worst], parts[worst+1:]...)
		line = join()
	}
	return line
}

// finalLine renders e.g. "scan    done  1,234,567 paths  12.3s  100.2k paths/s".
func (r *Reporter) finalLine(now time.Time) string {
	p := r.cur
	s := r.snap(now, true)
	parts := make([]string, 0, 9)
	parts = append(parts, fmt.Sprintf("%-7s %4s", p.name, "done"))
	cnt := Count(s.done)
	if s.total > 0 && s.total != s.done {
		cnt += "/" + Count(s.total)
	}
	parts = append(parts, cnt+" "+p.unit)
	if s.paths != 0 {
		parts = append(parts, Count(s.paths)+" "+p.secondaryName())
	}
	hasBytes := s.bytes != 0 || s.totalBytes > 0
	if hasBytes {
		parts = append(parts, Bytes(s.bytes))
	}
	parts = append(parts, Duration(s.elapsed))
	if s.rateOK {
		parts = append(parts, Short(s.rate)+" "+p.unit+"/s")
		if hasBytes {
			parts = append(parts, Bytes(int64(s.bytesRate))+"/s")
		}
	}
	if s.errors != 0 {
		parts = append(parts, "errors "+Count(s.errors))
	}
	return strings.Join(parts, "  ")
}

// jsonLine is the object emitted per interval in JSON mode.
type jsonLine struct {
	Phase          string  `json:"phase"`
	Unit           string  `json:"unit"`
	Secondary      string  `json:"secondary,omitempty"`
	Done           int64   `json:"done"`
	Total          int64   `json:"total"`
	Paths          int64   `json:"paths"`
	Bytes          int64   `json:"bytes"`
	TotalBytes     int64   `json:"total_bytes"`
	Rate           float64 `json:"rate"`
	BytesRate      float64 `json:"bytes_rate"`
	ETASeconds     float64 `json:"eta_seconds"` // -1 when unknown
	Errors         int64   `json:"errors"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	Final          bool    `json:"final"`
}

func round(v float64, digits int) float64 {
	m := math.Pow(10, float64(digits))
	return math.Round(v*m) / m
}

func (r *Reporter) jsonObject(now time.Time, final bool) jsonLine {
	p := r.cur
	s := r.snap(now, final)
	o := jsonLine{
		Phase:          p.name,
		Unit:           p.unit,
		Secondary:      p.secondary,
		Done:           s.done,
		Total:          s.total,
		Paths:          s.paths,
		Bytes:          s.bytes,
		TotalBytes:     s.totalBytes,
		Rate:           round(s.rate, 1),
		BytesRate:      round(s.bytesRate, 0),
		ETASeconds:     -1,
		Errors:         s.errors,
		ElapsedSeconds: round(s.elapsed.Seconds(), 3),
		Final:          final,
	}
	if s.etaOK && !final {
		o.ETASeconds = round(s.eta.Seconds(), 1)
	}
	return o
}

// Current returns the open phase's name and counters ("" and nil when no
// phase is open).
func (r *Reporter) Current() (string, *Counters) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return "", nil
	}
	return r.cur.name, r.cur.c
}
