package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"hlcp/internal/job"
)

func syncCmd() *cobra.Command {
	var cf commonFlags
	var o job.Options
	var maxDelete string
	cmd := &cobra.Command{
		Use:   "sync [flags] SRC DST",
		Short: "Make DST an exact mirror of SRC, in time set by what changed",
		Long: `Sync makes DST exactly what ` + "`hlcp copy SRC DST`" + ` would have made: the same paths,
the same hard-link structure, the same metadata and content. DST may be
missing or empty (then it is a copy), an earlier copy or mirror, or a tree
another tool made (rsync -aH, cp -a): no record of an earlier run is needed.

Both trees are scanned (getdents, no lstat per path) and joined by path, and
each inode pair is looked at once. What already matches is kept; a source
inode whose paths already reach a copy of it in DST keeps that inode, and its
other paths are linked to it; a source inode with none is copied once (or,
when the only copy of it sits at a path only DST has, as after a rename,
that inode is reused) and its other paths linked to the copy; paths only DST
has are deleted; metadata is fixed in place; directory times are set last.
After an rsnapshot rotation that is a relink per changed file plus the new
data, not a recopy. A path that is replaced goes through a temporary name
and a rename: no path of DST loses its old version before the new one is in
place. Only deletions remove paths.

An empty or unmounted SRC must not wipe the mirror: a sync that would delete
more than half of DST's paths refuses (exit 2) and changes nothing, unless
--max-delete allows it. -n lists the actions instead.

A sync killed at any moment leaves every path of DST in its old or its new
state; rerun it and it converges.

` + exitCodes,
		Example: `  hlcp sync /backups/rsnapshot /mnt/mirror/rsnapshot
  hlcp sync -n /backups/rsnapshot /mnt/mirror/rsnapshot     # list what would change
  hlcp sync --max-delete 10% /backups/rsnapshot /mnt/mirror/rsnapshot`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.apply(&o); err != nil {
				return &exitError{job.ExitUsage, err}
			}
			n, pct, err := parseMaxDelete(maxDelete)
			if err != nil {
				return &exitError{job.ExitUsage, err}
			}
			o.MaxDeleteGiven, o.MaxDelete, o.MaxDeletePct = maxDelete != "", n, pct
			if o.DryRun && o.Restart {
				return &exitError{job.ExitUsage, fmt.Errorf("--restart discards a job's state and --dry-run changes nothing: give one of them")}
			}
			o.Src, o.Dst = args[0], args[1]
			code, err := job.Sync(cmd.Context(), o)
			if code != 0 || err != nil {
				return &exitError{code, err}
			}
			return nil
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.State, "state", "", "keep the job state in DIR instead of DST/.hlcp-state")
	f.BoolVarP(&o.OneFileSystem, "one-file-system", "x", false, "do not descend into mount points below SRC (they are made empty)")
	f.BoolVarP(&o.Checksum, "checksum", "c", false, "compare content, not size and mtime, to decide that a file is unchanged")
	f.BoolVarP(&o.DryRun, "dry-run", "n", false, "list the actions (copy, link, relink, meta, delete, mkdir), one line each in path order, and change nothing")
	f.StringVar(&maxDelete, "max-delete", "", "most paths a sync may delete: N, or P% of DST's paths (default: half of DST's paths)")
	f.IntVar(&o.Retries, "retries", 3, "times to recopy a file that changes while it is copied before reporting it")
	f.DurationVar(&o.CheckpointEvery, "checkpoint", 10*time.Second, "how often an initial copy makes progress durable")
	f.BoolVar(&o.Restart, "restart", false, "discard the state of an unfinished (or damaged) job in DST and start over")
	return cmd
}

// parseMaxDelete parses --max-delete: "" (half of DST's paths), N, or P%.
func parseMaxDelete(s string) (int64, float64, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return -1, 0, nil
	case strings.HasSuffix(s, "%"):
		p, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
		if err != nil || !(p >= 0 && p <= 100) { // (NaN too)
			return 0, 0, fmt.Errorf("--max-delete %q: give N or P%% (0 to 100)", s)
		}
		if p == 0 {
			return 0, 0, nil
		}
		return 0, p, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, 0, fmt.Errorf("--max-delete %q: give N or P%%", s)
	}
	return n, 0, nil
}
