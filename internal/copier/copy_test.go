package copier

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/testutil"
)

type pent struct {
	off int64
	rec []byte
}

// built is a plan made by buildPlan: its directory table, the files to
// copy from (in the state directory), its records with their offsets, and
// its number of groups.
type built struct {
	tab    *plan.DirTable
	in     Input
	ents   []pent
	groups int64
	state  *fsx.Dir
}

// buildPlan makes the plan of the tree src (directories in pre-order, so
// that parents come first; every other entry in the plan) with the
// package plan's own builders, in the state directory state.
func buildPlan(t *testing.T, src, state string) (*plan.DirTable, Input, []pent) {
	b := buildPlanFull(t, src, state)
	return b.tab, b.in, b.ents
}

func buildPlanFull(t *testing.T, src, state string) built {
	t.Helper()
	sd, err := fsx.OpenDir(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sd.Close() })
	edir, err := sd.Mkdir("eruns")
	if err != nil {
		t.Fatal(err)
	}
	defer edir.Close()
	ddir, err := sd.Mkdir("druns")
	if err != nil {
		t.Fatal(err)
	}
	defer ddir.Close()
	ents := extsort.New(edir, 1<<20, false)
	dirs := extsort.New(ddir, 1<<20, false)
	var id uint32
	var walk func(p string, parent uint32, name string)
	walk = func(p string, parent uint32, name string) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		d := plan.Dir{ID: id, Parent: parent, Name: []byte(name)}
		id++
		d.SetStat(&st)
		if err := dirs.Add(plan.AppendDir(nil, &d)); err != nil {
			t.Fatal(err)
		}
		des, err := os.ReadDir(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range des {
			c := filepath.Join(p, e.Name())
			if e.IsDir() {
				walk(c, d.ID, e.Name())
				continue
			}
			var s unix.Stat_t
			if err := unix.Lstat(c, &s); err != nil {
				t.Fatal(err)
			}
			if err := ents.Add(plan.AppendEntry(nil, s.Dev, s.Ino, d.ID, fsx.TypeOfMode(s.Mode), []byte(e.Name()))); err != nil {
				t.Fatal(err)
			}
		}
	}
	walk(src, 0, "")
	druns, _, _, err := dirs.Finish()
	if err != nil {
		t.Fatal(err)
	}
	eruns, _, _, err := ents.Finish()
	if err != nil {
		t.Fatal(err)
	}
	tab, _, err := plan.BuildDirTable(druns, sd, sd, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tab.Close() })
	st, files, err := plan.Build(context.Background(), eruns, sd, sd, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := Input{Dir: sd, Plan: files[plan.PlanFile], Links: files[plan.LinksFile]}
	r, err := plan.OpenReader(sd, plan.PlanFile, in.Plan, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []pent
	for {
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pent{off, append([]byte(nil), rec...)})
	}
	return built{tab: tab, in: in, ents: out, groups: st.Groups, state: sd}
}

// trees makes the directories of a test: SRC under srcBase (or the test's
// temporary directory), DST and the state beside each other.
func trees(t *testing.T, srcBase string) (src, dst, state string) {
	base := t.TempDir()
	if srcBase == "" {
		srcBase = base
	}
	src, dst, state = filepath.Join(srcBase, "s"), filepath.Join(base, "d"), filepath.Join(base, "st")
	for _, d := range []string{src, dst, state} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return src, dst, state
}

// linked makes a file a in src with n-1 more links named by format.
func linked(t *testing.T, src string, n int, format string) {
	a := filepath.Join(src, "a")
	if err := os.WriteFile(a, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < n; i++ {
		if err := os.Link(a, filepath.Join(src, fmt.Sprintf(format, i))); err != nil {
			t.Fatal(err)
		}
	}
}

func openRoot(t *testing.T, p string) int {
	fd, err := unix.Open(p, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestWatermarkAfterStop: a stop (SIGINT, ENOSPC) mid-run; the final
// checkpoint's watermark must not pass a group whose links were not made
// (the tasks queued behind the stop are drained without their links).
func TestWatermarkAfterStop(t *testing.T) {
	src, dst, state := trees(t, "")
	for i := 0; i < 1500; i++ {
		a := filepath.Join(src, fmt.Sprintf("f%04d_a", i))
		os.WriteFile(a, []byte("x"), 0o644)
		os.Link(a, filepath.Join(src, fmt.Sprintf("f%04d_b", i)))
	}
	tab, p, ents := buildPlan(t, src, state)
	// Make the source of the 10th group vanish.
	e9, _ := plan.DecodeEntry(ents[18].rec)
	os.Remove(filepath.Join(src, string(e9.Name)))
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	ctx, stop := context.WithCancelCause(context.Background())
	c, err := New(ctx, sfd, dfd, tab, Options{Jobs: 1, OnError: func(rel string, err error) {
		stop(fmt.Errorf("interrupted"))
	}})
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	err = c.Copy(p, Marks{}, nil, func(m Marks) error { last = m.Plan; return nil }, 0)
	t.Logf("Copy: %v; final watermark %d of plan size %d", err, last, len(ents))
	missing := 0
	for i, pe := range ents {
		if pe.off >= last {
			break
		}
		if i > 0 && plan.SameInode(ents[i-1].rec, pe.rec) {
			continue // a link: LinkPlan's
		}
		e, _ := plan.DecodeEntry(pe.rec)
		if _, err := os.Lstat(filepath.Join(dst, string(e.Name))); err != nil {
			missing++
			if missing < 4 {
				t.Logf("below watermark but missing: %s (off %d)", e.Name, pe.off)
			}
		}
	}
	if missing > 1 { // the vanished file itself is a legit per-path error
		t.Errorf("%d paths below the checkpointed watermark %d are missing in DST", missing, last)
	}
}

// TestWatermarkBigLast: a large group ends the plan; the final watermark is
// still the end of the plan.
func TestWatermarkBigLast(t *testing.T) {
	src, dst, state := trees(t, "")
	linked(t, src, 2*maxLinkTask, "l%05d")
	tab, p, _ := buildPlan(t, src, state)
	// The marks are logical offsets: the data, not the block checksums.
	planEnd, _ := blockfile.Logical(p.Plan.Size)
	linksEnd, _ := blockfile.Logical(p.Links.Size)
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	c, _ := New(context.Background(), sfd, dfd, tab, Options{Jobs: 2})
	var last Marks
	err := c.Copy(p, Marks{}, nil, func(m Marks) error { last = m; return nil }, 0)
	t.Logf("Copy: %v; final marks %+v, plan size %d", err, last, planEnd)
	if last.Plan != planEnd || last.Groups != 1 || last.Links != linksEnd {
		t.Errorf("final marks %+v, want plan size %d, 1 group, link file size %d", last, planEnd, linksEnd)
	}
}

// TestEmlinkSplits: one inode with 140,000 links, from tmpfs (no link
// limit) to ext4 (65,000): the link tasks of the group, on two workers,
// share the new copy made when the inode is full, so the group is split
// once into three inodes, not once per task.
func TestEmlinkSplits(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: makes 140,000 links")
	}
	var sfs, dfs unix.Statfs_t
	if unix.Statfs("/dev/shm", &sfs) != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm for a source without a link limit")
	}
	if unix.Statfs(os.TempDir(), &dfs) != nil || dfs.Type != unix.EXT4_SUPER_MAGIC {
		t.Skipf("%s is not ext4 (65,000 links per inode); the loop-mounted cases are in cmd/hlcp", os.TempDir())
	}
	sbase, err := os.MkdirTemp("/dev/shm", "hlcp-emlink-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sbase)
	src, dst, state := trees(t, sbase)
	const n = 140000
	linked(t, src, n, "l%06d")
	tab, p, _ := buildPlan(t, src, state)
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	c, _ := New(context.Background(), sfd, dfd, tab, Options{Jobs: 2})
	err = c.Copy(p, Marks{}, nil, nil, 0)
	t.Logf("Copy: %v; split groups %d, extra copies %d, errors %d, paths %d", err, c.Stats.SplitGroups.Load(), c.Stats.ExtraCopies.Load(), c.Stats.Errors.Load(), c.Stats.Paths.Load())
	if c.Stats.SplitGroups.Load() != 1 || c.Stats.ExtraCopies.Load() != 2 {
		t.Errorf("one group of %d links should need 2 extra copies and count 1 split", n)
	}
	if got := c.Stats.Paths.Load(); got != n || c.Stats.Errors.Load() != 0 {
		t.Errorf("%d paths made, %d errors; want %d paths", got, c.Stats.Errors.Load(), n)
	}
	inodes := map[uint64]int{}
	ents, _ := os.ReadDir(dst)
	for _, e := range ents {
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dst, e.Name()), &st)
		inodes[st.Ino]++
	}
	if len(ents) != n || len(inodes) != 3 {
		t.Errorf("DST has %d paths on %d inodes, want %d paths on 3", len(ents), len(inodes), n)
	}
}

// TestLinksOfFailedCreate: when a group's inode cannot be created (its
// source vanished), a file an earlier run left at its first path is
// removed, and each of its links is reported, not linked to that stale
// file.
func TestLinksOfFailedCreate(t *testing.T) {
	src, dst, state := trees(t, "")
	linked(t, src, 4, "l%d")
	os.WriteFile(filepath.Join(src, "z"), []byte("other"), 0o644)
	tab, p, _ := buildPlan(t, src, state)
	os.Remove(filepath.Join(src, "a"))
	os.WriteFile(filepath.Join(dst, "a"), []byte("stale"), 0o644)
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	var errs []string
	c, _ := New(context.Background(), sfd, dfd, tab, Options{Jobs: 2, OnError: func(rel string, err error) { errs = append(errs, rel+": "+err.Error()) }})
	if err := c.Copy(p, Marks{}, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	sort.Strings(errs)
	t.Logf("errors: %q", errs)
	if len(errs) != 4 || !bytes.Contains([]byte(errs[0]), []byte("vanished")) || !bytes.Contains([]byte(errs[1]), []byte("not linked to a")) {
		t.Errorf("want 1 vanished + 3 not linked, got %q", errs)
	}
	for _, n := range []string{"a", "l1", "l2", "l3"} {
		if _, err := os.Lstat(filepath.Join(dst, n)); err == nil {
			t.Errorf("%s exists in DST", n)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "z")); string(b) != "other" {
		t.Errorf("z = %q", b)
	}
}

// TestLinkWatermarkAfterStop: a stop in the middle of the link file; every
// link below the final watermark exists.
func TestLinkWatermarkAfterStop(t *testing.T) {
	src, dst, state := trees(t, "")
	linked(t, src, 3*maxLinkTask, "l%05d")
	tab, p, _ := buildPlan(t, src, state)
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	ctx, stop := context.WithCancelCause(context.Background())
	c, _ := New(ctx, sfd, dfd, tab, Options{Jobs: 1}) // tasks in order: the first one is done when the stop comes
	ctr := new(progress.Counters)
	go func() {
		for ctr.Paths.Load() < maxLinkTask+100 {
			time.Sleep(50 * time.Microsecond)
		}
		stop(fmt.Errorf("interrupted"))
	}()
	var last int64
	err := c.Copy(p, Marks{}, ctr, func(m Marks) error { last = m.Links; return nil }, 0)
	t.Logf("Copy: %v; final link mark %d, %d paths made", err, last, ctr.Paths.Load())
	if err == nil {
		t.Fatal("the stop was not seen")
	}
	r, err := plan.OpenReader(p.Dir, plan.LinksFile, p.Links, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var l plan.Link
	n := 0
	for r.Offset() < last {
		rec, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		plan.DecodeLink(rec, &l)
		if _, err := os.Lstat(filepath.Join(dst, string(l.Name))); err != nil {
			t.Fatalf("link %s below the watermark is missing", l.Name)
		}
		n++
	}
	if n == 0 || n == 3*maxLinkTask-1 {
		t.Errorf("%d links below the watermark: the stop should land inside the file", n)
	}
}

// TestLinkModes: the same links with io_uring batches and with one linkat
// each: a group larger than a ring, names left by an interrupted run
// (replaced), and the links of a group whose inode could not be created
// (reported one by one).
func TestLinkModes(t *testing.T) {
	for _, noRing := range []bool{false, true} {
		t.Run(fmt.Sprintf("noRing=%v", noRing), func(t *testing.T) {
			src, dst, state := trees(t, "")
			const n = 3*ringSize + 7
			linked(t, src, n, "l%04d")
			os.WriteFile(filepath.Join(src, "v"), []byte("vanishes"), 0o644)
			for i := 0; i < 5; i++ {
				os.Link(filepath.Join(src, "v"), filepath.Join(src, fmt.Sprintf("v%d", i)))
			}
			tab, p, _ := buildPlan(t, src, state)
			os.Remove(filepath.Join(src, "v"))
			for _, left := range []string{"l0001", "l0300", "l0700"} {
				os.WriteFile(filepath.Join(dst, left), []byte("left by an earlier run"), 0o644)
			}
			sfd, dfd := openRoot(t, src), openRoot(t, dst)
			var mu sync.Mutex
			var errs []string
			c, _ := New(context.Background(), sfd, dfd, tab, Options{Jobs: 3, NoRing: noRing, OnError: func(rel string, err error) {
				mu.Lock()
				errs = append(errs, rel)
				mu.Unlock()
			}})
			if err := c.Copy(p, Marks{}, nil, nil, 0); err != nil {
				t.Fatal(err)
			}
			sort.Strings(errs)
			if fmt.Sprint(errs) != "[v v0 v1 v2 v3 v4]" {
				t.Errorf("errors for %q, want v and its 5 links", errs)
			}
			var a unix.Stat_t
			unix.Lstat(filepath.Join(dst, "a"), &a)
			if a.Nlink != n || c.Stats.Links.Load() != n-1 {
				t.Errorf("a has %d links, %d made; want %d", a.Nlink, c.Stats.Links.Load(), n)
			}
			ring := c.Stats.RingLinks.Load()
			t.Logf("%d links, %d of them through io_uring", c.Stats.Links.Load(), ring)
			if r, err := fsx.NewRing(8); err == nil {
				r.Close()
				if !noRing && ring < n-10 {
					t.Errorf("only %d links through io_uring", ring)
				}
			}
			if noRing && ring != 0 {
				t.Errorf("%d links through io_uring with NoRing", ring)
			}
			for i := 1; i < n; i++ {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(dst, fmt.Sprintf("l%04d", i)), &st); err != nil || st.Ino != a.Ino {
					t.Fatalf("l%04d: %v, inode %d, want %d", i, err, st.Ino, a.Ino)
				}
			}
		})
	}
}

// TestModesAndOwners: a file's mode and owner come out as the source's
// whatever the destination directory does to new files: a default ACL
// (which, not the umask, then trims the create mode) and a setgid bit
// (which gives new files the directory's group), and for every kind of
// mode: ones a file can be created with, read-only ones, setuid ones.
func TestModesAndOwners(t *testing.T) {
	src, dst, state := trees(t, "")
	root := os.Geteuid() == 0
	modes := []uint32{0o644, 0o600, 0o755, 0o444, 0o640, 0o666, 0o777, 0o4755, 0o2750, 0o1644, 0o000}
	for i, m := range modes {
		p := filepath.Join(src, fmt.Sprintf("m%04o", m))
		os.WriteFile(p, []byte(fmt.Sprint(i)), 0o600)
		unix.Chmod(p, m)
		if root {
			os.Lchown(p, 1000+i, 2000+i%3)
		}
	}
	if root {
		os.Chown(filepath.Join(src, "m0644"), 0, 0) // what a new file gets: no chown needed
	}
	// DST: setgid with another group, and a default ACL that takes the
	// group's write and all of other's bits from new files.
	if root {
		os.Chown(dst, 0, 4321)
	}
	os.Chmod(dst, 0o755|os.ModeSetgid)
	def := testutil.EncodeACL([]testutil.ACLEntry{{Tag: testutil.ACLUserObj, Perm: 7}, {Tag: testutil.ACLGroupObj, Perm: 5}, {Tag: testutil.ACLOther, Perm: 0}})
	if err := unix.Setxattr(dst, "system.posix_acl_default", def, 0); err != nil {
		t.Logf("no default ACL on %s (%v): only the setgid case", dst, err)
	}
	tab, p, _ := buildPlan(t, src, state)
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	var errs []string
	c, _ := New(context.Background(), sfd, dfd, tab, Options{Jobs: 2, Owner: root, OnError: func(rel string, err error) { errs = append(errs, rel+": "+err.Error()) }})
	if err := c.Copy(p, Marks{}, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Errorf("errors: %q", errs)
	}
	for _, m := range modes {
		n := fmt.Sprintf("m%04o", m)
		var s, d unix.Stat_t
		unix.Lstat(filepath.Join(src, n), &s)
		if err := unix.Lstat(filepath.Join(dst, n), &d); err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		if d.Mode != s.Mode {
			t.Errorf("%s: mode %o, want %o", n, d.Mode, s.Mode)
		}
		if root && (d.Uid != s.Uid || d.Gid != s.Gid) {
			t.Errorf("%s: owner %d:%d, want %d:%d", n, d.Uid, d.Gid, s.Uid, s.Gid)
		}
	}
}
