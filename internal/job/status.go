package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/journal"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/scan"
)

// Exit codes of `hlcp status`.
const (
	StatusJob   = 0 // an unfinished job was found and shown
	StatusNoJob = 1 // no unfinished job there
)

// JobStatus is what `hlcp status` shows (and prints as JSON).
type JobStatus struct {
	State      string           `json:"state_dir"`
	Identity   journal.Identity `json:"identity"`
	Phase      string           `json:"phase"`
	Started    time.Time        `json:"started"`
	Updated    time.Time        `json:"updated"`
	Attempts   int              `json:"attempts"`
	Scan       *scan.Stats      `json:"scan,omitempty"`
	Plan       *plan.Stats      `json:"plan,omitempty"`
	Fraction   float64          `json:"fraction_of_phase"` // of the copy or remove phase, at the last checkpoint
	GroupsDone int64            `json:"groups_done"`
	PathsDone  int64            `json:"paths_done"`
	BytesDone  int64            `json:"bytes_done"`
	Errors     int64            `json:"errors"`
	ErrorLog   string           `json:"error_log,omitempty"`
}

// Status reads the state of the job in dst (or in stateDir when not "")
// and prints it. It changes nothing: the state is only read.
func Status(dst, stateDir string, asJSON bool, w io.Writer) (int, error) {
	var place journal.Place
	if stateDir == "" {
		fd, err := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return ExitUsage, usagef("DST %s: %w", msg.Quote(dst), err)
		}
		defer unix.Close(fd)
		place = journal.Place{Parent: fd, Name: StateName, Path: filepath.Join(dst, StateName), InDst: true}
	} else {
		abs := absPath(stateDir)
		fd, err := unix.Open(filepath.Dir(abs), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return ExitUsage, usagef("--state %s: its parent directory: %w", msg.Quote(stateDir), err)
		}
		defer unix.Close(fd)
		place = journal.Place{Parent: fd, Name: filepath.Base(abs), Path: stateDir}
	}
	j, err := journal.Open(place, true)
	if errors.Is(err, journal.ErrNoJob) {
		if asJSON {
			fmt.Fprintln(w, `{"job":null}`)
		} else {
			fmt.Fprintf(w, "no unfinished hlcp job in %s (a finished job leaves no state)\n", msg.Quote(place.Path))
		}
		return StatusNoJob, nil
	}
	var de *journal.DamagedError
	if errors.As(err, &de) {
		if de.Foreign {
			return ExitUsage, usagef("%w", de)
		}
		if de.MayHoldMovedData() {
			return ExitUsage, usagef("%s", movedWarning(de.Error()))
		}
		return ExitUsage, usagef("%w: the job cannot be resumed from it; pass --restart to its command to discard it and copy again", de)
	}
	if err != nil {
		return ExitUsage, err
	}
	defer j.Close()
	s := JobStatus{State: j.Dir, Identity: j.ID, Phase: j.Phase, Started: j.Started, Updated: j.Updated, Attempts: j.Attempts,
		GroupsDone: j.GroupsDone, PathsDone: j.PathsDone, BytesDone: j.BytesDone, Errors: j.Errors}
	if len(j.Scan) > 0 {
		s.Scan = new(scan.Stats)
		json.Unmarshal(j.Scan, s.Scan)
	}
	if len(j.Plan) > 0 {
		s.Plan = new(plan.Stats)
		json.Unmarshal(j.Plan, s.Plan)
	}
	switch {
	case j.Phase == journal.PhaseCopy:
		s.Fraction = copyShare(&j.State)
	case j.Phase == journal.PhaseRemove && !j.FilesGone:
		s.Fraction = planShare(&j.State, j.RemoveMark)
	case j.Phase == journal.PhaseFinish && j.Dirs > 0:
		s.Fraction = 1 - float64(j.FinishBelow)/float64(j.Dirs)
	case j.Phase == journal.PhaseRemove, j.Phase == journal.PhaseDone:
		s.Fraction = 1
	}
	if st, err := j.StateDir().Lstat(journal.ErrorLog); err == nil && st.Size > 0 {
		s.ErrorLog = j.Join(journal.ErrorLog)
	}
	if asJSON {
		b, _ := json.Marshal(&s)
		fmt.Fprintf(w, "%s\n", b)
		return StatusJob, nil
	}
	c := progress.Count
	fmt.Fprintf(w, "unfinished job: %s", rerunCommand(j.ID, stateDir))
	if j.ID.Options != "" {
		fmt.Fprintf(w, " (%s)", msg.Quote(j.ID.Options))
	}
	fmt.Fprintf(w, "\n  state         %s\n", msg.Quote(j.Dir))
	fmt.Fprintf(w, "  started       %s, %d run(s), last checkpoint %s (%s ago)\n",
		j.Started.Local().Format(time.DateTime), j.Attempts, j.Updated.Local().Format(time.DateTime), progress.Duration(time.Since(j.Updated)))
	phase := msg.Quote(j.Phase)
	switch j.Phase {
	case journal.PhaseScan:
		phase += " (an interrupted scan starts again)"
	case journal.PhaseRemove:
		if j.FilesGone {
			phase += " (source files done; removing empty source directories)"
		} else {
			phase += " (removing source files whose copies are durable and match)"
		}
	}
	fmt.Fprintf(w, "  phase         %s\n", phase)
	if s.Scan != nil {
		fmt.Fprintf(w, "  source        %s paths: %s directories, %s other paths\n", c(s.Scan.Dirs+s.Scan.Entries), c(s.Scan.Dirs), c(s.Scan.Entries))
	}
	if s.Plan != nil {
		fmt.Fprintf(w, "  inodes        %s (%s with several paths)\n", c(s.Plan.Groups), c(s.Plan.LinkGroups))
	}
	switch j.Phase {
	case journal.PhaseCopy, journal.PhaseFinish, journal.PhaseRemove:
		fmt.Fprintf(w, "  progress      %.1f%% of phase %s checkpointed (a rerun goes on from there)", 100*s.Fraction, msg.Quote(j.Phase))
		if j.Phase == journal.PhaseCopy {
			// Workers run ahead of the checkpoint: these are what the
			// run had copied in all when it saved it.
			fmt.Fprintf(w, "; %s inodes, %s paths, %s copied by then", c(s.GroupsDone), c(s.PathsDone), progress.Bytes(s.BytesDone))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  errors        %s", c(s.Errors))
	if s.ErrorLog != "" {
		fmt.Fprintf(w, " (in %s)", msg.Quote(s.ErrorLog))
	}
	fmt.Fprintf(w, "\nrerun `%s` to finish it", rerunCommand(j.ID, stateDir))
	if j.MovedData() {
		fmt.Fprintf(w, " (it has removed source paths: DST holds their only copy)\n")
	} else {
		fmt.Fprintf(w, ", or pass --restart to that command to start over\n")
	}
	return StatusJob, nil
}

// rerunCommand is the command line that resumes the job: its command,
// -x if it was given, --state when the state is not in DST, SRC and DST;
// every word quoted where it needs to be.
func rerunCommand(id journal.Identity, stateDir string) string {
	cmd := "hlcp " + msg.Quote(id.Command)
	if strings.Contains(id.Options, "one-file-system=true") {
		cmd += " -x"
	}
	if stateDir != "" {
		cmd += " --state " + msg.Quote(stateDir)
	}
	return cmd + " " + msg.Quote(id.Src) + " " + msg.Quote(id.Dst)
}

// planShare is how far the plan offset off is into the job's plan file
// (0 when the plan is not made yet).
func planShare(j *journal.State, off int64) float64 {
	if n := dataSize(j, plan.PlanFile); n > 0 {
		return float64(off) / float64(n)
	}
	return 0
}

// copyShare is how far the copy's marks are into the plan and link files
// together.
func copyShare(j *journal.State) float64 {
	if n := dataSize(j, plan.PlanFile) + dataSize(j, plan.LinksFile); n > 0 {
		return float64(j.Watermark+j.LinkMark) / float64(n)
	}
	return 0
}

// dataSize is the data size of the state file name, as written.
func dataSize(j *journal.State, name string) int64 {
	n, _ := blockfile.Logical(j.Files[name].Size)
	return n
}
