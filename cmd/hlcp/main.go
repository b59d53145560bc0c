// Command hlcp copies and verifies huge hard-link-heavy directory
// trees (rsnapshot, rsync --link-dest, dirvish, Back In Time repositories)
// exactly, in bounded memory, with live progress, resumably.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"hlcp/internal/budget"
	"hlcp/internal/differ"
	"hlcp/internal/job"
	"hlcp/internal/progress"
	"hlcp/internal/testhook"
)

// version is the module version and the VCS revision the binary was built
// from (debug.ReadBuildInfo): every bug report starts with it.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown version: built without module information)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, when, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = ", with uncommitted changes"
			}
		}
	}
	out := v
	if rev != "" {
		out += fmt.Sprintf(" (revision %s", rev)
		if when != "" {
			out += ", " + when
		}
		out += dirty + ")"
	} else {
		out += " (no VCS revision recorded: built outside a git checkout, or with -buildvcs=false)"
	}
	return out + ", " + bi.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
}

const exitCodes = `Exit codes:
  0    success: everything copied (move: and removed from SRC; verify: the trees are identical)
  1    verify: the trees differ
  2    bad arguments or refused to start (nothing was changed)
  3    finished, but some paths failed or changed while being copied, or (move)
       were kept in SRC; they are listed at the end
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
func verifyCopy(ctx context.Context, o job.Options) error {
	if !o.Quiet && o.Progress != progress.JSON {
		fmt.Printf("\n$ hlcp verify --checksum %s %s\n", o.Src, o.Dst)
	}
	vo := job.VerifyOptions{Options: o, JSON: o.Progress == progress.JSON}
	vo.Verify.Checksum = true
	vo.Verify.What = differ.All
	vo.Verify.OneFileSystem = o.OneFileSystem // what -x left out is not missing
	code, err := job.Verify(ctx, vo)
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
	f.StringVar(&c.memory, "memory", fmt.Sprintf("%dM", budget.Default>>20), "memory budget for the whole process (sort buffers scale with it)")
	f.StringVar(&c.progress, "progress", "auto", "progress display: auto (live line on a terminal, plain lines otherwise), tty, plain, json, none")
	f.BoolVarP(&c.quiet, "quiet", "q", false, "no progress and no summary; errors are still printed")
	f.DurationVar(&c.interval, "interval", 5*time.Second, "period of plain/json progress lines")
}

func (c *commonFlags) apply(o *job.Options) error {
	mem, err := parseSize(c.memory)
	if err != nil {
		return err
	}
	if mem < budget.Min {
		return fmt.Errorf("--memory %s is too small (at least %dM)", c.memory, budget.Min>>20)
	}
	mode, err := progress.ParseMode(c.progress)
	if err != nil {
		return err
	}
	o.Jobs, o.Memory, o.Progress, o.Quiet, o.Interval = c.jobs, mem, mode, c.quiet, c.interval
	return nil
}

// jobFlags are the flags of copy and move.
func jobFlags(cmd *cobra.Command, o *job.Options) {
	f := cmd.Flags()
	f.StringVar(&o.State, "state", "", "keep the job state in DIR instead of DST/.hlcp-state (on a fast disk, or when SRC has a .hlcp-state entry)")
	f.BoolVar(&o.Restart, "restart", false, "discard the state of an unfinished (or damaged) job in DST and start over")
	f.BoolVar(&o.DiscardMoved, "discard-moved-data", false, "with --restart: discard even the state of a move that has removed source paths, whose only copy is in DST (a new job may then overwrite them)")
	f.BoolVarP(&o.OneFileSystem, "one-file-system", "x", false, "do not descend into mount points below SRC (they are created empty)")
	f.IntVar(&o.Retries, "retries", 3, "times to recopy a file that changes while it is copied before reporting it")
	f.DurationVar(&o.CheckpointEvery, "checkpoint", 10*time.Second, "how often to make progress durable (syncfs + journal)")
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

The job's state lives in DST/.hlcp-state (or --state DIR: a directory owned
by you or root that nobody else can write), mode 0700, and is removed at the
end. If the copy is interrupted (Ctrl-C, kill -9, power loss, full disk),
rerun the same command: it resumes from its last checkpoint. ` + "`hlcp status DST`" + `
shows how far an unfinished job got. Rerun after it finished: DST is checked
against SRC and the command exits 0 with "already complete".

` + exitCodes,
		Example: `  hlcp copy /backups/rsnapshot /mnt/newdisk/rsnapshot
  hlcp copy -j 8 --memory 256M --progress=plain /srv/snapshots /mnt/new/snapshots`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.apply(&o); err != nil {
				return &exitError{job.ExitUsage, err}
			}
			o.Src, o.Dst = args[0], args[1]
			code, err := job.Copy(cmd.Context(), o)
			if code != 0 || err != nil {
				if verifyAfter {
					fmt.Fprintln(os.Stderr, "hlcp: the copy did not complete: not verified")
				}
				return &exitError{code, err}
			}
			if verifyAfter {
				return verifyCopy(cmd.Context(), o)
			}
			return nil
		},
	}
	cf.add(cmd)
	cmd.Flags().BoolVar(&verifyAfter, "verify", false, "after the copy, run `hlcp verify --checksum SRC DST` (content read again on both sides); exit 1 if they differ")
	jobFlags(cmd, &o)
	return cmd
}

func moveCmd() *cobra.Command {
	var cf commonFlags
	var o job.Options
	cmd := &cobra.Command{
		Use:   "move [flags] SRC DST",
		Short: "Copy SRC to DST, then remove from SRC what is safely in DST",
		Long: `Move copies SRC to DST exactly as ` + "`hlcp copy`" + ` does, makes the copy durable
(syncfs), and only then removes each source path whose copy in DST still
matches it: same type, size, mtime, mode and owner, every xattr and ACL (and
content with --checksum), and an inode that has not changed since it was
copied (else its content is compared too). Each path is renamed aside,
checked again, then unlinked. Source directories are removed when they are
empty, deepest first; SRC itself stays unless --remove-root. A path that does
not match, or whose copy failed or lacks metadata, is kept in SRC and listed
(exit 3).

At no moment, kill -9 and power loss included, is a path missing from both
SRC and DST. Rerun the same command after an interruption: it finishes the
job from its last checkpoint. Rerun it after it finished: it says "nothing
left to move" and exits 0. A move that has removed source paths cannot be
discarded (--restart) without --discard-moved-data.

` + exitCodes,
		Example: `  hlcp move /mnt/old/rsnapshot /mnt/new/rsnapshot
  hlcp move --checksum --remove-root /mnt/old/rsnapshot /mnt/new/rsnapshot`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.apply(&o); err != nil {
				return &exitError{job.ExitUsage, err}
			}
			o.Src, o.Dst, o.Move = args[0], args[1], true
			code, err := job.Copy(cmd.Context(), o)
			if code != 0 || err != nil {
				return &exitError{code, err}
			}
			return nil
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.BoolVarP(&o.Checksum, "checksum", "c", false, "before removing a source file, compare its content with its copy (reads both)")
	f.BoolVar(&o.RemoveRoot, "remove-root", false, "remove SRC itself too when it is empty at the end")
	jobFlags(cmd, &o)
	return cmd
}

func statusCmd() *cobra.Command {
	var state string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [flags] DST",
		Short: "Show how far an unfinished copy or move into DST got (changes nothing)",
		Long: `Status reads the state of an unfinished hlcp copy or move in DST (or in
--state DIR) and shows its command, phase and progress at the last
checkpoint. It only reads: it never changes the job or the trees.

Exit codes:
  0    an unfinished job was found and shown
  1    no unfinished job (a finished job leaves no state behind)
  2    bad arguments, or the state cannot be read`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := job.Status(args[0], state, asJSON, os.Stdout)
			if code != 0 || err != nil {
				return &exitError{code, err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "the job's state directory, when it was started with --state DIR")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as one JSON object")
	return cmd
}

// signalContext is the commands' context: SIGINT or SIGTERM ends it with
// job.ErrInterrupted as its cause, and every phase then stops at its next
// checkpoint and returns (the exit code is 130).
func signalContext() context.Context {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		for range sigs {
			cancel(job.ErrInterrupted)
		}
	}()
	return ctx
}

func main() {
	root := &cobra.Command{
		Use:   "hlcp",
		Short: "Copy, move and verify huge hard-link-heavy directory trees",
		Long: `hlcp copies, moves and verifies huge hard-link-heavy directory trees, such as
rsnapshot, rsync --link-dest, dirvish and Back In Time backup repositories,
exactly (hard links, every file type, all metadata), in bounded memory, with
live progress, and resumably.

Start with: hlcp demo

` + exitCodes,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.Version = version()
	root.SetVersionTemplate("hlcp {{.Version}}\n")
	root.AddCommand(copyCmd(), moveCmd(), syncCmd(), verifyCmd(), statusCmd(), demoCmd())
	if p := testhook.CPUProfile; p != "" {
		// For profiling (see bench/): HLCP_CPUPROFILE=cpu.pprof hlcp copy ...
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	err := root.ExecuteContext(signalContext())
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
