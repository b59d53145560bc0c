package job

import (
	"bufio"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"os"
	"sync"

	"hlcp/internal/fsx"
	"hlcp/internal/journal"
	"hlcp/internal/progress"
)

// errLog records per-path errors: shown live (through the progress
// reporter, so the live line is not garbled), spooled to a file in the
// state directory (memory does not grow with the number of errors), and
// listed again at the end.
type errLog struct {
	mu     sync.Mutex
	rep    *progress.Reporter
	dir    *fsx.Dir // the state directory
	f      *os.File
	w      *bufio.Writer
	n      int64
	closed bool // the log file is closed: errors are still counted and shown
	warns  map[string]bool
	warnL  []string
}

func newErrLog(rep *progress.Reporter, dir *fsx.Dir) (*errLog, error) {
	f, err := dir.OpenAppend(journal.ErrorLog)
	if err != nil {
		return nil, fmt.Errorf("open error log: %w", err)
	}
	return &errLog{rep: rep, dir: dir, f: f, w: bufio.NewWriter(f), warns: make(map[string]bool)}, nil
}

func (e *errLog) add(rel string, err error) {
	line := fmt.Sprintf("%s: %v", msg.Quote(rel), err)
	e.mu.Lock()
	e.n++
	if !e.closed {
		e.w.WriteString(line)
		e.w.WriteByte('\n')
	}
	e.mu.Unlock()
	e.rep.Logf("error: %s", line)
}

func (e *errLog) warn(key, msg string) {
	e.mu.Lock()
	if e.warns[key] {
		e.mu.Unlock()
		return
	}
	e.warns[key] = true
	e.warnL = append(e.warnL, msg)
	e.mu.Unlock()
	e.rep.Logf("warning: %s", msg)
}

func (e *errLog) count() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n
}

func (e *errLog) warnings() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.warnL...)
}

// list copies every spooled error (of this and earlier attempts) to w.
func (e *errLog) list(w io.Writer) (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.w.Flush(); err != nil {
		return 0, err
	}
	f, err := e.dir.Open(journal.ErrorLog)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.Copy(w, f)
}

// truncate empties the spooled list (the log is closed).
func (e *errLog) truncate() error {
	f, err := e.dir.OpenRW(journal.ErrorLog)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(0)
}

// sync makes the spooled errors durable, so that a checkpoint never
// records progress past an error that a crash would then forget.
func (e *errLog) sync() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	if err := e.w.Flush(); err != nil {
		return fmt.Errorf("error log: %w", err)
	}
	if err := e.f.Sync(); err != nil {
		return fmt.Errorf("error log: %w", err)
	}
	return nil
}

func (e *errLog) close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.w.Flush()
	return e.f.Close()
}
