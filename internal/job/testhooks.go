package job

import (
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/progress"
)

// killHook is for the crash tests: with HLCP_TEST_KILL=PHASE:N in the
// environment, the process sends itself SIGKILL (a real kill -9: no
// deferred code, no flush) as soon as phase PHASE's progress counter
// has advanced by N in this run (from where the run resumed it). PHASE is a progress phase name (scan, sort, mkdir, copy,
// finish, remove, rmdir). The counters are polled, so the kill lands
// wherever the workers happen to be at that moment.
func killHook(rep *progress.Reporter) {
	spec := os.Getenv("HLCP_TEST_KILL")
	if spec == "" {
		return
	}
	name, num, ok := strings.Cut(spec, ":")
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil {
		return
	}
	go func() {
		var seen *progress.Counters
		var base int64
		for {
			if p, c := rep.Current(); p == name && c != nil {
				v := c.Done.Load() + c.Paths.Load()
				if c != seen {
					seen, base = c, v
				}
				if v-base >= n {
					unix.Kill(os.Getpid(), unix.SIGKILL)
				}
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
}
