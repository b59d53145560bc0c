// Command hlcp copies and verifies huge hard-link-heavy directory
// trees (rsnapshot, rsync --link-dest, dirvish, Back In Time repositories)
// exactly, in bounded memory, with live progress, resumably.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"hlcp/internal/job"
	"hlcp/internal/progress"
	"hlcp/internal/verify"
)

const exitCodes = `Exit codes:
  0    success: everything copied (verify: the trees are identical)
  1    verify: the trees differ
  2    bad arguments or refused to start (nothing was changed)
  3    finished, but some paths failed or changed while being copied (listed at the end)
  4    stopped before the end (destination full, I/O error); the state is kept: rerun to resume
  130  interrupted (Ctrl-C, SIGTERM); the state is kept: rerun to resume`

// parseSize parses "128M", "1G", "512KiB", "1048576".
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid size %q (use e.g. 128M, 1G)", s)
	}
	return int64(v * float64(mult)), nil
}

// verifyCopy checks a completed copy with verify --checksum, in the same
// budget and with the same progress display.
func verifyCopy(o job.Options) error {
	if !o.Quiet && o.Progress != progress.JSON {
		fmt.Printf("\n$ hlcp verify --checksum %s %s\n", o.Src, o.Dst)
	}
	vo := job.VerifyOptions{Options: o, JSON: o.Progress == progress.JSON}
	vo.Verify.Checksum = true
	vo.Verify.What = verify.All
	vo.Verify.OneFileSystem = o.OneFileSystem // what -x left out is not missing
	code, err := job.Verify(vo)
	if code != 0 || err != nil {
		if err == nil {
			err = fmt.Errorf("verify: DST differs from SRC")
		}
		return &exitError{code, err}
	}
	return nil
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

type commonFlags struct {
	jobs     int
	memory   string
	progress string
	quiet    bool
	interval time.Duration
}

func (c *commonFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVarP(&c.jobs, "jobs", "j", 0, fmt.Sprintf("parallel workers (default %d on this machine)", job.DefaultJobs()))
	f.StringVar(&c.memory, "memory", "128M", "memory budget for the whole process (sort buffers scale with it)")
	f.StringVar(&c.progress, "progress", "auto", "progress display: auto (live line on a terminal, plain lines otherwise), tty, plain, json, none")
	f.BoolVarP(&c.quiet, "quiet", "q", false, "no progress and no summary; errors are still printed")
	f.DurationVar(&c.interval, "interval", 5*time.Second, "period of plain/json progress lines")
}

func (c *commonFlags) apply(o *job.Options) error {
	mem, err := parseSize(c.memory)
	if err != nil {
		return err
	}
	if mem < 32<<20 {
		return fmt.Errorf("--memory %s is too small (at least 32M)", c.memory)
	}
	mode, err := progress.ParseMode(c.progress)
	if err != nil {
		return err
	}
	o.Jobs, o.Memory, o.Progress, o.Quiet, o.Interval = c.jobs, mem, mode, c.quiet, c.interval
	return nil
}

func copyCmd() *cobra.Command {
	var cf commonFlags
	var o job.Options
	var verifyAfter bool
	cmd := &cobra.Command{
		Use:   "copy [flags] SRC DST",
		Short: "Copy the tree SRC to DST with its hard-link structure and all metadata",
		Long: `Copy makes DST an exact copy of the directory tree SRC: every file type, the
hard-link structure (two paths share an inode in DST exactly when they do in
SRC), owners, modes, nanosecond times, xattrs and ACLs, sparse holes.

DST must not exist or be empty: SRC's content goes directly into DST (like
rsync SRC/ DST/; there is no trailing-slash distinction). Memory stays within
--memory however large the tree is: the scan's records are sorted on disk.

The job's state lives in DST/.hlcp-state (or --state DIR) and is removed at
the end. If the copy is interrupted (Ctrl-C, kill -9, power loss, full disk),
rerun the same command: it resumes from its last checkpoint.

` + exitCodes,
		Example: `  hlcp copy /backups/rsnapshot /mnt/newdisk/rsnapshot
  hlcp copy -j 8 --memory 256M --progress=plain /srv/snapshots /mnt/new/snapshots`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.apply(&o); err != nil {
				return &exitError{job.ExitUsage, err}
			}
			o.Src, o.Dst = args[0], args[1]
			code, err := job.Copy(o)
			if code != 0 || err != nil {
				if verifyAfter {
					fmt.Fprintln(os.Stderr, "hlcp: the copy did not complete: not verified")
				}
				return &exitError{code, err}
			}
			if verifyAfter {
				return verifyCopy(o)
			}
			return nil
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.BoolVar(&verifyAfter, "verify", false, "after the copy, run `hlcp verify --checksum SRC DST` (content read again on both sides); exit 1 if they differ")
	f.StringVar(&o.State, "state", "", "keep the job state in DIR instead of DST/.hlcp-state (on a fast disk, or when SRC has a .hlcp-state entry)")
	f.BoolVar(&o.Restart, "restart", false, "discard the state of an unfinished job in DST and start over")
	f.BoolVarP(&o.OneFileSystem, "one-file-system", "x", false, "do not descend into mount points below SRC (they are created empty)")
	f.IntVar(&o.Retries, "retries", 3, "times to recopy a file that changes while it is copied before reporting it")
	f.DurationVar(&o.CheckpointEvery, "checkpoint", 10*time.Second, "how often to make progress durable (syncfs + journal)")
	return cmd
}

func main() {
	root := &cobra.Command{
		Use:   "hlcp",
		Short: "Copy and verify huge hard-link-heavy directory trees",
		Long: `hlcp copies and verifies huge hard-link-heavy directory trees, such as
rsnapshot, rsync --link-dest, dirvish and Back In Time backup repositories,
exactly (hard links, every file type, all metadata), in bounded memory, with
live progress, and resumably.

Start with: hlcp demo

` + exitCodes,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(copyCmd(), verifyCmd(), demoCmd())
	if p := os.Getenv("HLCP_CPUPROFILE"); p != "" {
		// For profiling (see bench/): HLCP_CPUPROFILE=cpu.pprof hlcp copy ...
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	err := root.Execute()
	pprof.StopCPUProfile()
	if err == nil {
		return
	}
	var ee *exitError
	code := job.ExitUsage
	if errors.As(err, &ee) {
		code = ee.code
		err = ee.err
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hlcp: %v\n", err)
	}
	os.Exit(code)
}
