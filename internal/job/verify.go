package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"hlcp/internal/differ"
	"hlcp/internal/progress"
	"hlcp/internal/verify"
)

// VerifyOptions of `hlcp verify`.
type VerifyOptions struct {
	Options
	Verify differ.Options
	JSON   bool // differences and summary as JSON lines
}

// FormatDiff is the one-line, grep-able form of a difference (see
// verify.Format).
func FormatDiff(d differ.Diff) string { return verify.Format(d) }

// Verify runs `hlcp verify`: 0 identical, 1 different, 3 some paths could
// not be checked (and no difference found), 2 bad arguments.
func Verify(ctx context.Context, o VerifyOptions) (int, error) {
	o.defaults()
	setMemoryLimit(o.Memory)
	if err := checkTree("SRC", o.Src); err != nil {
		return ExitUsage, err
	}
	if err := checkTree("DST", o.Dst); err != nil {
		return ExitUsage, err
	}
	// Verify never writes to the trees: its sort files must not land in
	// one of them (they would also show up as differences).
	tmp := o.Verify.TmpDir
	if tmp == "" {
		tmp = os.TempDir()
	}
	for _, t := range []struct{ role, p string }{{"SRC", o.Src}, {"DST", o.Dst}} {
		if in, err := inside(tmp, t.p); err == nil && in {
			return ExitUsage, usagef("the temporary directory %s is inside %s %s (verify never writes to the trees): give another with --tmp", msg.Quote(tmp), t.role, msg.Quote(t.p))
		}
	}
	start := time.Now()
	mode := o.Progress
	if o.Quiet {
		mode = progress.Quiet
	}
	rep := progress.New(o.Stderr, mode, o.Interval)
	v := o.Verify
	v.Src, v.Dst, v.Jobs, v.Memory, v.Progress = o.Src, o.Dst, o.Jobs, o.Memory, rep
	res, err := differ.Run(ctx, v, &verify.Printer{W: o.Stdout, JSON: o.JSON})
	rep.Close()
	if errors.Is(err, ErrInterrupted) {
		return ExitInterrupted, errors.New("verify interrupted")
	}
	if err != nil {
		return ExitStopped, fmt.Errorf("verify: %w", err)
	}
	code := ExitOK
	if res.Diffs-res.Errors > 0 {
		code = ExitDiffer
	} else if res.Errors > 0 {
		code = ExitPartial
	}
	elapsed := time.Since(start)
	if o.JSON {
		json.NewEncoder(o.Stdout).Encode(struct {
			Summary  differ.Result `json:"summary"`
			Elapsed  float64       `json:"elapsed_seconds"`
			PeakRSS  int64         `json:"peak_rss_bytes"`
			ExitCode int           `json:"exit_code"`
		}{res, elapsed.Seconds(), PeakRSS(), code})
		return code, nil
	}
	if !o.Quiet {
		printVerifySummary(o.Stdout, &o, res, code, elapsed)
	}
	return code, nil
}

func printVerifySummary(w io.Writer, o *VerifyOptions, res differ.Result, code int, elapsed time.Duration) {
	c := progress.Count
	verdict := map[int]string{ExitOK: "identical", ExitDiffer: "DIFFERENT", ExitPartial: "no difference found, but some paths could not be checked"}[code]
	fmt.Fprintf(w, "hlcp verify %s %s: %s (%s)\n", msg.Quote(o.Src), msg.Quote(o.Dst), verdict, progress.Duration(elapsed))
	fmt.Fprintf(w, "  paths         %s in SRC, %s in DST, %s in both\n", c(res.SrcPaths), c(res.DstPaths), c(res.Matched))
	content := "not compared (use --checksum)"
	if res.Hashed > 0 {
		content = fmt.Sprintf("%s inodes hashed, %s read", c(res.Hashed), progress.Bytes(res.BytesHashed))
	}
	fmt.Fprintf(w, "  inode pairs   %s compared once each; content %s\n", c(res.InodePairs), content)
	if len(res.ByCode) > 0 {
		var parts []string
		for k, v := range res.ByCode {
			parts = append(parts, fmt.Sprintf("%s %s", k, c(v)))
		}
		sort.Strings(parts)
		fmt.Fprintf(w, "  differences   %s: %s\n", c(res.Diffs), strings.Join(parts, ", "))
	} else {
		fmt.Fprintf(w, "  differences   0\n")
	}
	fmt.Fprintf(w, "  peak memory   %s (budget %s)\n", progress.Bytes(PeakRSS()), progress.Bytes(o.Memory))
}
