package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Measure is one timed command.
type Measure struct {
	Wall    float64 `json:"wall_s"`
	User    float64 `json:"user_s"`
	Sys     float64 `json:"sys_s"`
	PeakRSS int64   `json:"peak_rss_bytes"` // peak of the sum of RSS over the whole process tree (sampled every 50 ms; at least the largest VmHWM)
	Exit    int     `json:"exit"`
	Killed  bool    `json:"killed,omitempty"` // still running at the time limit: Wall is a lower bound
	Tail    string  `json:"tail,omitempty"`   // end of the output when it failed
}

func dropCaches() {
	syscall.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// treeRSS sums the resident memory of pid and all its descendants, found
// through /proc/PID/task/TID/children (cheap: only the tree is read, not
// all of /proc, so that sampling does not steal CPU from the tool). hwm
// gets each process's VmHWM, its own peak since exec, which catches peaks
// between two samples. (getrusage's ru_maxrss cannot serve: it counts the
// pages of the forked copy of this benchmark process before exec.)
func treeRSS(pid int, hwm map[int]int64) int64 {
	var sum int64
	stack := []int{pid}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p)); err == nil {
			rss, peak := statusKB(b, "VmRSS:"), statusKB(b, "VmHWM:")
			sum += rss << 10
			hwm[p] = max(hwm[p], peak<<10)
		}
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, t.Name()))
			if err != nil {
				continue
			}
			for _, c := range strings.Fields(string(b)) {
				if n, err := strconv.Atoi(c); err == nil {
					stack = append(stack, n)
				}
			}
		}
	}
	return sum
}

// statusKB reads a "Key:   123 kB" line of /proc/PID/status.
func statusKB(status []byte, key string) int64 {
	i := bytes.Index(status, []byte(key))
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(status[i+len(key) : i+len(key)+bytes.IndexByte(status[i+len(key):], '\n')]))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return n
}

// measure runs a shell command line in its own process group and samples
// the total RSS of its process tree every 50 ms. A command still running
// after limit (if > 0) is killed with its whole process group.
func measure(cmdline string, cold bool, limit time.Duration) Measure {
	if cold {
		dropCaches()
	}
	cmd := exec.Command("sh", "-c", cmdline)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	var m Measure
	if err := cmd.Start(); err != nil {
		m.Exit = -1
		m.Tail = err.Error()
		return m
	}
	done := make(chan struct{})
	peak := make(chan int64)
	go func() {
		var p int64
		hwm := map[int]int64{}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if r := treeRSS(cmd.Process.Pid, hwm); r > p {
				p = r
			}
			select {
			case <-done:
				for _, h := range hwm {
					p = max(p, h) // one process's peak between samples
				}
				peak <- p
				return
			case <-tick.C:
			}
		}
	}()
	var killed atomic.Bool
	if limit > 0 {
		t := time.AfterFunc(limit, func() {
			killed.Store(true)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		})
		defer t.Stop()
	}
	err := cmd.Wait()
	m.Wall = time.Since(start).Seconds()
	m.Killed = killed.Load()
	close(done)
	m.PeakRSS = <-peak
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.User = time.Duration(ru.Utime.Nano()).Seconds()
		m.Sys = time.Duration(ru.Stime.Nano()).Seconds()
	}
	if err != nil {
		m.Exit = cmd.ProcessState.ExitCode()
		s := out.String()
		if len(s) > 2000 {
			s = s[len(s)-2000:]
		}
		m.Tail = s
	}
	return m
}

// straceCount runs cmdline under strace -f -c and returns the total number of
// syscalls.
func straceCount(cmdline, tmp string) (int64, error) {
	outf := filepath.Join(tmp, "strace.txt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "strace", "-f", "-c", "-o", outf, "sh", "-c", cmdline)
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("strace %s: %v: %s", cmdline, err, lastLines(string(out), 5))
	}
	b, err := os.ReadFile(outf)
	if err != nil {
		return 0, err
	}
	// The last line: "100.00    x.xxxx   usecs   CALLS   ERRORS total"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[len(f)-1] == "total" {
			return strconv.ParseInt(f[3], 10, 64)
		}
	}
	return 0, fmt.Errorf("no total in strace output")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Filesystems: a loop-mounted ext4 image per use when root, else a plain
// directory.

type fsys struct {
	dir, image string
	loop       bool
}

func mkfsMount(work, name string, sizeBytes, inodes int64, loop bool) (*fsys, error) {
	dir := filepath.Join(work, name)
	if !loop {
		os.RemoveAll(dir)
		return &fsys{dir: dir}, os.MkdirAll(dir, 0o755)
	}
	img := filepath.Join(work, name+".img")
	os.Remove(img)
	f, err := os.Create(img)
	if err != nil {
		return nil, err
	}
	f.Truncate(sizeBytes)
	f.Close()
	args := []string{"-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0"}
	if inodes > 0 {
		args = append(args, "-N", strconv.FormatInt(inodes, 10))
	}
	if out, err := exec.Command("mkfs.ext4", append(args, img)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %v %s", err, out)
	}
	return mountImage(img, dir)
}

// loopDirectIO makes the loop devices use direct I/O on their image files
// (-loop-dio). A buffered loop device keeps every block twice in the page
// cache, its own and the image file's, and copies each block between the
// two in a kernel worker: on this kind of machine that memcpy took about a
// third of all CPU time of a copy, a cost no real disk has. With direct
// I/O the loop device passes blocks to the virtual disk as a disk
// controller would.
var loopDirectIO = true

func mountImage(img, dir string) (*fsys, error) {
	os.MkdirAll(dir, 0o755)
	// Whatever an interrupted run left mounted there goes first: a mount
	// on top of it would hide it, and its loop device would be taken for
	// this one's.
	for i := 0; i < 8 && exec.Command("mountpoint", "-q", dir).Run() == nil; i++ {
		if exec.Command("umount", dir).Run() != nil {
			exec.Command("umount", "-l", dir).Run()
		}
	}
	if out, err := exec.Command("mount", "-o", "loop,noatime", img, dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mount %s: %v %s", img, err, out)
	}
	if loopDirectIO {
		dev, err := exec.Command("findmnt", "-n", "-o", "SOURCE", dir).Output()
		if err == nil {
			_, err = exec.Command("losetup", "--direct-io=on", strings.TrimSpace(string(dev))).CombinedOutput()
		}
		if err != nil {
			exec.Command("umount", dir).Run()
			return nil, fmt.Errorf("direct I/O for the loop device of %s: %v (run with -loop-dio=false)", img, err)
		}
	}
	os.Remove(filepath.Join(dir, "lost+found"))
	return &fsys{dir: dir, image: img, loop: true}, nil
}

func (f *fsys) unmount() {
	if f.loop {
		if exec.Command("umount", f.dir).Run() != nil {
			exec.Command("umount", "-l", f.dir).Run()
		}
	}
}

func (f *fsys) destroy() {
	f.unmount()
	if f.loop {
		os.Remove(f.image)
	} else {
		exec.Command("rm", "-rf", f.dir).Run()
	}
}

// usage of the filesystem holding dir: bytes and inodes in use.
func usage(dir string) (bytes, inodes int64) {
	var s syscall.Statfs_t
	if syscall.Statfs(dir, &s) != nil {
		return 0, 0
	}
	return int64(s.Blocks-s.Bfree) * s.Bsize, int64(s.Files - s.Ffree)
}

func createFile(p string) (*os.File, error) { return os.Create(p) }
