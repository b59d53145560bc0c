// Package testhook is the one place where hlcp reads the environment
// variables that tests and measurements use to reach inside it. Production
// code asks this package, never the environment. They are read once, when
// the process starts:
//
//	HLCP_NO_URING=1          links one linkat at a time, as where io_uring is missing
//	HLCP_NO_DIRECT=1         sendfile for all data between filesystems, no O_DIRECT writes
//	HLCP_NO_PREFETCH=1       no read-ahead of source files
//	HLCP_CPUPROFILE=FILE     write a CPU profile of the run to FILE
//	HLCP_TEST_KILL=PHASE:N   SIGKILL self once phase PHASE's counter advanced by N
//	HLCP_TEST_CRASH_AT=PHASE SIGKILL self right after the journal reached PHASE
//	                         (or "state-removed": a finished job's state is
//	                         gone, the root's times are not set yet)
//	HLCP_TEST_PAUSE_AT=POINT[:N]
//	                         SIGSTOP self the Nth time (default 1) the code
//	                         passes POINT (see Pause); the test does its deed,
//	                         then sends SIGCONT
//
// The first three are documented switches for A/B comparisons and for
// systems where a piece misbehaves; the others exist for the crash and
// race tests only.
package testhook

import (
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// CPUProfile is where to write a CPU profile of the whole run
// (HLCP_CPUPROFILE; see bench/).
var CPUProfile = os.Getenv("HLCP_CPUPROFILE")

// Switches of the data path.
var (
	NoURing    = os.Getenv("HLCP_NO_URING") != ""
	NoDirect   = os.Getenv("HLCP_NO_DIRECT") != ""
	NoPrefetch = os.Getenv("HLCP_NO_PREFETCH") != ""
)

var (
	crashAt          = os.Getenv("HLCP_TEST_CRASH_AT")
	pausePoint, nth  = parsePause(os.Getenv("HLCP_TEST_PAUSE_AT"))
	pauseSeen        atomic.Int64
	killPhase, killN = parseKill(os.Getenv("HLCP_TEST_KILL"))
)

func parsePause(spec string) (string, int64) {
	if spec == "" {
		return "", 0
	}
	name, num, ok := strings.Cut(spec, ":")
	n := int64(1)
	if ok {
		if v, err := strconv.ParseInt(num, 10, 64); err == nil && v > 0 {
			n = v
		}
	}
	return name, n
}

func parseKill(spec string) (string, int64) {
	name, num, ok := strings.Cut(spec, ":")
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil {
		return "", 0
	}
	return name, n
}

// die is a real kill -9: no deferred code, no flush.
func die() {
	unix.Kill(os.Getpid(), unix.SIGKILL)
	select {} // the signal is on its way
}

// CrashAt kills the process if the journal has just reached phase (after
// it was saved durably), for HLCP_TEST_CRASH_AT.
func CrashAt(phase string) {
	if crashAt != "" && crashAt == phase {
		die()
	}
}

// Pause stops the process (SIGSTOP) the Nth time it passes point, for
// HLCP_TEST_PAUSE_AT: a test then changes the trees at that exact moment
// and continues it with SIGCONT. Points: "saved-PHASE" (the journal has
// just been saved in phase PHASE), "remove-rename" (the remover is about
// to set a checked source path aside, before it unlinks it).
func Pause(point string) {
	if pausePoint == "" || point != pausePoint {
		return
	}
	if pauseSeen.Add(1) == nth {
		// The process stops as a whole, but the thread that sent the
		// signal could run on for a moment: it waits for the SIGCONT.
		cont := make(chan os.Signal, 1)
		signal.Notify(cont, unix.SIGCONT)
		defer signal.Stop(cont)
		unix.Kill(os.Getpid(), unix.SIGSTOP)
		<-cont
	}
}

// PhaseStarted is called as each phase of the progress display starts:
// HLCP_TEST_KILL=PHASE:0 kills the process there, however short the phase
// (the watcher of KillAfter polls, and can miss one).
func PhaseStarted(name string) {
	if killPhase != "" && killPhase == name && killN == 0 {
		die()
	}
}

// KillAfter starts the watcher of HLCP_TEST_KILL=PHASE:N: the process
// sends itself SIGKILL as soon as phase PHASE's progress counter has
// advanced by N in this run (from where the run resumed it). The counters
// are polled, so the kill lands wherever the workers happen to be at that
// moment. cur reports the phase and its count, and whether the phase's
// counters changed since the last call (a new phase object).
func KillAfter(cur func() (phase string, count int64, fresh bool)) {
	if killPhase == "" {
		return
	}
	go func() {
		var base int64
		started := false
		for {
			if p, v, fresh := cur(); p == killPhase {
				if fresh || !started {
					base, started = v, true
				}
				if v-base >= killN {
					die()
				}
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
}
