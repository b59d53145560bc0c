package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/journal"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/scan"
)

// Summary is what a copy did, printed at the end (and as JSON).
type Summary struct {
	Command      string        `json:"command"`
	Src          string        `json:"src"`
	Dst          string        `json:"dst"`
	Elapsed      time.Duration `json:"elapsed_ns"`
	Scan         scan.Stats    `json:"scan"`
	Plan         plan.Stats    `json:"plan"`
	Dirs         int64         `json:"dirs"`
	Inodes       int64         `json:"inodes_created"`
	Paths        int64         `json:"paths_created"`
	Links        int64         `json:"links_created"`
	Bytes        int64         `json:"bytes"`
	Reflinked    int64         `json:"files_reflinked"`
	CopyRange    int64         `json:"files_copy_file_range"`
	Sendfile     int64         `json:"files_sendfile"`
	Direct       int64         `json:"files_direct"`
	RingLinks    int64         `json:"links_batched"`
	ReadWrite    int64         `json:"files_read_write"`
	SplitGroups  int64         `json:"split_groups"`
	ExtraCopies  int64         `json:"extra_copies"`
	ExtraBytes   int64         `json:"extra_bytes"`
	OutsideLinks int64         `json:"inodes_with_links_outside_src"`
	Changed      int64         `json:"changed_while_copying"`
	Removed      int64         `json:"src_paths_removed,omitempty"`
	Kept         int64         `json:"src_paths_kept,omitempty"`
	DirsRemoved  int64         `json:"src_dirs_removed,omitempty"`
	DirsKept     int64         `json:"src_dirs_kept,omitempty"`
	RootRemoved  bool          `json:"src_root_removed,omitempty"`
	Errors       int64         `json:"errors"`
	Warnings     []string      `json:"warnings,omitempty"`
	PeakRSS      int64         `json:"peak_rss_bytes"`
	Resumed      bool          `json:"resumed"`
	AlreadyDone  string        `json:"already_done,omitempty"` // a rerun of a finished command: why nothing was left to do
	ExitCode     int           `json:"exit_code"`
}

// PeakRSS reads the process's peak resident set size (VmHWM).
func PeakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(line[6:]), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// stop ends a run that could not finish: the state is kept for a rerun,
// and the message gives one instruction: resume, free space, or (for a
// damaged state, which no rerun can go on from) start over.
func (r *runner) stop(err error) (int, error) {
	r.fillSummary()
	code := ExitStopped
	what := fmt.Sprintf("stopped in phase %s: %v", r.j.Phase, err)
	advice := fmt.Sprintf("the job state is kept in %s; rerun the same command to resume", msg.Quote(r.j.Dir))
	switch {
	case errors.Is(err, ErrInterrupted):
		code = ExitInterrupted
		what = "interrupted"
	case errors.Is(err, blockfile.ErrDamaged):
		// No later run may go on from this state: say so in it.
		if serr := r.j.SetDamaged(err.Error()); serr != nil {
			what += fmt.Sprintf(" (and the state could not be marked damaged: %v)", serr)
		}
		advice = fmt.Sprintf("the job state in %s is damaged: the job cannot be resumed from it; pass --restart to discard it and copy again over what is in DST", msg.Quote(r.j.Dir))
		if r.j.MovedData() {
			advice = movedWarning(fmt.Sprintf("the job state in %s is damaged", msg.Quote(r.j.Dir)))
		}
	case (errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)) && r.stateFull():
		advice = fmt.Sprintf("the filesystem of the job's state (%s) is full: free space there and rerun the same command to resume", msg.Quote(r.j.Dir))
	case errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT):
		advice = "the destination is full" + r.spaceNeeded() + ": free space (or move the job to a larger destination, see the README) and rerun the same command to resume; the job state is kept in " + msg.Quote(r.j.Dir)
	}
	r.rep.Close()
	r.printSummary(code)
	return code, fmt.Errorf("%s\n%s", what, advice)
}

// stateFull reports whether what filled up is the state's own filesystem
// (--state elsewhere than DST) rather than DST's.
func (r *runner) stateFull() bool {
	sd := r.j.StateDir()
	st, err := sd.Stat()
	var ds unix.Stat_t
	if err != nil || unix.Fstat(r.dstFd, &ds) != nil || st.Dev == ds.Dev {
		return false
	}
	fs, err := sd.Statfs()
	return err == nil && int64(fs.Bavail)*int64(fs.Bsize) < 4<<20
}

// spaceNeeded says how much the rest of the copy needs, from the last
// checkpoint on, and how much the destination has free.
func (r *runner) spaceNeeded() string {
	j := r.j
	if r.cp == nil || (j.Phase != journal.PhaseCopy && j.Phase != journal.PhaseMkdir) {
		return ""
	}
	need, inodes, complete, err := r.cp.Remaining(r.input(), j.Watermark, time.Minute)
	if err != nil {
		return ""
	}
	about := "about"
	if !complete {
		about = "at least"
	}
	s := fmt.Sprintf(": %s %s of data in %s inodes is still to be copied", about, progress.Bytes(need), progress.Count(inodes))
	var fs unix.Statfs_t
	if unix.Fstatfs(r.dstFd, &fs) == nil {
		s += fmt.Sprintf(", and %s is free", progress.Bytes(int64(fs.Bavail)*int64(fs.Bsize)))
	}
	return s
}

func (r *runner) fillSummary() {
	s := &r.sum
	s.Elapsed = time.Since(r.start)
	if cp := r.cp; cp != nil {
		st := &cp.Stats
		s.Dirs = st.Dirs.Load()
		s.Inodes = st.Groups.Load()
		s.Paths = st.Paths.Load()
		s.Links = st.Links.Load()
		s.Bytes = st.Bytes.Load()
		s.Reflinked = st.Cloned.Load()
		s.CopyRange = st.CopyRange.Load()
		s.Sendfile = st.Sendfile.Load()
		s.RingLinks = st.RingLinks.Load()
		s.Direct = st.Direct.Load()
		s.ReadWrite = st.ReadWrite.Load()
		s.SplitGroups = st.SplitGroups.Load()
		s.ExtraCopies = st.ExtraCopies.Load()
		s.ExtraBytes = st.ExtraBytes.Load()
		s.OutsideLinks = st.OutsideLinks.Load()
		s.Changed = st.Changed.Load()
	}
	if rm := r.rm; rm != nil {
		st := &rm.Stats
		s.Removed = st.Removed.Load()
		s.Kept = st.Kept.Load()
		s.DirsRemoved = st.DirsRemoved.Load()
		s.DirsKept = st.DirsKept.Load()
	}
	if r.errs != nil {
		s.Errors = r.prevErrors + r.errs.count()
		s.Warnings = r.errs.warnings()
	}
	s.PeakRSS = PeakRSS()
}

func (r *runner) printSummary(code int) {
	s := &r.sum
	s.ExitCode = code
	w := r.o.Stdout
	if r.o.Progress == progress.JSON {
		b, _ := json.Marshal(s)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	if r.o.Quiet {
		return
	}
	c := progress.Count
	status := "done"
	switch code {
	case ExitPartial:
		status = "done with errors"
	case ExitStopped:
		status = "stopped"
	case ExitInterrupted:
		status = "interrupted"
	}
	fmt.Fprintf(w, "hlcp %s %s -> %s: %s in %s\n", s.Command, msg.Quote(s.Src), msg.Quote(s.Dst), status, progress.Duration(s.Elapsed))
	fmt.Fprintf(w, "  source        %s paths: %s directories, %s other paths (%s lstat'ed)\n",
		c(s.Scan.Dirs+s.Scan.Entries), c(s.Scan.Dirs), c(s.Scan.Entries), c(s.Scan.Lstats))
	fmt.Fprintf(w, "  inodes        %s (%s regular, %s symlinks, %s other); %s with several paths, largest %s paths\n",
		c(s.Plan.Groups), c(s.Plan.ByType[8]), c(s.Plan.ByType[10]),
		c(s.Plan.Groups-s.Plan.ByType[8]-s.Plan.ByType[10]), c(s.Plan.LinkGroups), c(s.Plan.MaxLinks))
	fmt.Fprintf(w, "  created       %s directories, %s inodes, %s hard links (%s of them in io_uring batches)\n", c(s.Dirs), c(s.Inodes), c(s.Links), c(s.RingLinks))
	fmt.Fprintf(w, "  data          %s (%s files reflinked, %s copy_file_range, %s sendfile, %s direct, %s read/write)\n",
		progress.Bytes(s.Bytes), c(s.Reflinked), c(s.CopyRange), c(s.Sendfile), c(s.Direct), c(s.ReadWrite))
	if s.OutsideLinks > 0 {
		fmt.Fprintf(w, "  note          %s inodes have hard links outside SRC; their paths inside SRC are linked together in DST\n", c(s.OutsideLinks))
	}
	if s.SplitGroups > 0 {
		fmt.Fprintf(w, "  split         %s inodes had more links than the destination allows per inode (EMLINK): copied again %s times\n", c(s.SplitGroups), c(s.ExtraCopies))
	} else if s.ExtraCopies > 0 {
		fmt.Fprintf(w, "  no hard links %s extra copies (%s) because the destination cannot hard-link\n", c(s.ExtraCopies), progress.Bytes(s.ExtraBytes))
	}
	if s.Changed > 0 {
		fmt.Fprintf(w, "  changed       %s files changed while being copied (listed above)\n", c(s.Changed))
	}
	for _, wmsg := range s.Warnings {
		fmt.Fprintf(w, "  warning       %s\n", wmsg)
	}
	if s.Command == "move" {
		fmt.Fprintf(w, "  removed       %s source paths, %s source directories", c(s.Removed), c(s.DirsRemoved))
		if s.RootRemoved {
			fmt.Fprintf(w, " and SRC itself")
		}
		fmt.Fprintf(w, "\n")
		if s.Kept > 0 || s.DirsKept > 0 {
			fmt.Fprintf(w, "  kept in SRC   %s paths, %s directories (listed above; rerun the move after fixing them)\n", c(s.Kept), c(s.DirsKept))
		}
	}
	fmt.Fprintf(w, "  errors        %s\n", c(s.Errors))
	fmt.Fprintf(w, "  peak memory   %s (budget %s)\n", progress.Bytes(s.PeakRSS), progress.Bytes(r.o.Memory))
}
