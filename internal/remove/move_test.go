package remove

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/copier"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// move is a tree copied as `hlcp move` copies it (with copy records), for
// the remover to work on.
type move struct {
	src, dst string
	state    *fsx.Dir
	tab      *plan.DirTable
	in       copier.Input
	groups   int64
	recs     [][]byte // the plan's records
	cp       *plan.Copied
	srcDev   uint64 // the device the plan gives SRC's entries (the scan's)
	devMap   map[uint64]uint64
}

// newMove makes SRC with populate, plans it and copies it to DST with copy
// records. fakeDev, when not zero, is the device number the plan gives
// SRC's entries instead of theirs (a scan before a reboot that renumbered
// the device); the copy and the removal map it back.
func newMove(t *testing.T, populate func(src string), fakeDev uint64) *move {
	t.Helper()
	base := t.TempDir()
	m := &move{src: filepath.Join(base, "s"), dst: filepath.Join(base, "d")}
	state := filepath.Join(base, "st")
	for _, d := range []string{m.src, m.dst, state} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	populate(m.src)
	var err error
	if m.state, err = fsx.OpenDir(state); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.state.Close() })
	edir, err := m.state.Mkdir("eruns")
	if err != nil {
		t.Fatal(err)
	}
	defer edir.Close()
	ddir, err := m.state.Mkdir("druns")
	if err != nil {
		t.Fatal(err)
	}
	defer ddir.Close()
	ents := extsort.New(edir, 1<<20, false)
	dirs := extsort.New(ddir, 1<<20, false)
	var root unix.Stat_t
	if err := unix.Lstat(m.src, &root); err != nil {
		t.Fatal(err)
	}
	m.srcDev = root.Dev
	if fakeDev != 0 {
		m.srcDev, m.devMap = fakeDev, map[uint64]uint64{fakeDev: root.Dev}
	}
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
		d.Dev = m.srcDev
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
			if err := ents.Add(plan.AppendEntry(nil, m.srcDev, s.Ino, d.ID, fsx.TypeOfMode(s.Mode), []byte(e.Name()))); err != nil {
				t.Fatal(err)
			}
		}
	}
	walk(m.src, 0, "")
	druns, _, _, err := dirs.Finish()
	if err != nil {
		t.Fatal(err)
	}
	eruns, _, _, err := ents.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if m.tab, _, err = plan.BuildDirTable(druns, m.state, m.state, 1<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.tab.Close() })
	st, files, err := plan.Build(context.Background(), eruns, m.state, m.state, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.groups = st.Groups
	m.in = copier.Input{Dir: m.state, Plan: files[plan.PlanFile], Links: files[plan.LinksFile]}
	r, err := plan.OpenReader(m.state, plan.PlanFile, m.in.Plan, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		m.recs = append(m.recs, append([]byte(nil), rec...))
	}
	if m.cp, _, err = plan.CreateCopied(m.state, m.groups); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.cp.Close() })

	sfd, dfd := openDir(t, m.src), openDir(t, m.dst)
	var mu sync.Mutex
	var errs []string
	c, err := copier.New(context.Background(), sfd, dfd, m.tab, copier.Options{Jobs: 2, Owner: os.Geteuid() == 0, Copied: m.cp, SrcDevMap: m.devMap,
		OnError: func(rel string, err error) { mu.Lock(); errs = append(errs, rel+": "+err.Error()); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.MakeDirs(1, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Copy(m.in, copier.Marks{}, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(m.tab.Len(), true, nil); err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Fatalf("copy errors: %q", errs)
	}
	return m
}

func openDir(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// group is the index of the group whose first path is rel (a name in
// SRC's root).
func (m *move) group(t *testing.T, rel string) int64 {
	t.Helper()
	gi := int64(-1)
	for i, rec := range m.recs {
		if i == 0 || !plan.SameInode(m.recs[i-1], rec) {
			gi++
		}
		e, _ := plan.DecodeEntry(rec)
		if m.tab.Rel(e.Dir, e.Name) == rel {
			return gi
		}
	}
	t.Fatalf("%s is not in the plan", rel)
	return -1
}

// setRecord replaces the copy record of rel's group (nil ctime: the
// source's current one). none writes a record of zeros: no record.
func (m *move) setRecord(t *testing.T, rel string, flags uint8, ctime *unix.Timespec, none bool) {
	t.Helper()
	gi := m.group(t, rel)
	rec := make([]byte, plan.CopiedRecord)
	if !none {
		if ctime == nil {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(m.src, rel), &st); err != nil {
				t.Fatal(err)
			}
			ctime = &st.Ctim
		}
		rec = plan.AppendCopied(nil, gi, *ctime, flags)
	}
	if err := m.cp.PutRange(gi, rec); err != nil {
		t.Fatal(err)
	}
}

// removal is what a run of the remover did.
type removal struct {
	r    *Remover
	errs map[string]string // kept paths and why
}

// remove runs the remover's Files (and, with dirs, Dirs) on m.
func (m *move) remove(t *testing.T, opt Options, dirs bool) removal {
	t.Helper()
	res := removal{errs: map[string]string{}}
	opt.OnError = func(rel string, err error) { res.errs[rel] = err.Error() }
	opt.Owner = os.Geteuid() == 0 // as the job does: the copy restored owners
	if opt.Copied == nil {
		opt.Copied = m.cp
	}
	if opt.SrcDevMap == nil {
		opt.SrcDevMap = m.devMap
	}
	res.r = New(openDir(t, m.src), openDir(t, m.dst), m.tab, opt)
	t.Cleanup(res.r.Close)
	var last int64 = -1
	if err := res.r.Files(context.Background(), Input{Dir: m.state, Plan: m.in.Plan}, 0, 0, nil, func(off, groups int64) error { last = groups; return nil }, 0); err != nil {
		t.Fatal(err)
	}
	if last != m.groups {
		t.Errorf("the final checkpoint counts %d groups, the plan has %d", last, m.groups)
	}
	if dirs {
		if err := res.r.Dirs(context.Background(), m.tab.Len(), nil, nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	return res
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// restoreTimes gives p the mtime (and atime) of st.
func restoreTimes(t *testing.T, p string, st *unix.Stat_t) {
	t.Helper()
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// rewrite writes content over the file p in place (same inode), then puts
// its mtime back: only its ctime tells that it changed.
func rewrite(t *testing.T, p, content string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a ctime of another clock tick
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	restoreTimes(t, p, &st)
	var now unix.Stat_t
	unix.Lstat(p, &now)
	if now.Ino != st.Ino || now.Ctim == st.Ctim || now.Mtim != st.Mtim || now.Size != st.Size {
		t.Fatalf("rewrite of %s: inode %d→%d, ctime %v→%v, mtime %v→%v, size %d→%d", p, st.Ino, now.Ino, st.Ctim, now.Ctim, st.Mtim, now.Mtim, st.Size, now.Size)
	}
}

const content = "the content of x, 32 bytes long"

// TestMoveChecks: which source paths a move removes after their copy,
// depending on what happened to the source or its copy since the copy,
// and on the copy records.
func TestMoveChecks(t *testing.T) {
	root := os.Geteuid() == 0
	cases := []struct {
		name     string
		rootOnly bool
		after    func(t *testing.T, m *move) // after the copy
		opt      Options
		removed  bool   // x is removed
		want     string // x is kept with this in its error
		full     int64  // FullChecks
	}{
		{name: "unchanged", removed: true},
		{name: "unchanged, checksum", opt: Options{Checksum: true}, removed: true, full: 2},
		{name: "rewritten, same content, mtime restored", removed: true, full: 1,
			after: func(t *testing.T, m *move) { rewrite(t, filepath.Join(m.src, "x"), content) }},
		{name: "rewritten, other content of the same size, mtime restored", want: "content", full: 1,
			after: func(t *testing.T, m *move) { rewrite(t, filepath.Join(m.src, "x"), strings.ToUpper(content)) }},
		{name: "chmod", want: "mode", full: 1,
			after: func(t *testing.T, m *move) { os.Chmod(filepath.Join(m.src, "x"), 0o600) }},
		{name: "chmod and back", removed: true, full: 1,
			after: func(t *testing.T, m *move) {
				p := filepath.Join(m.src, "x")
				os.Chmod(p, 0o600)
				time.Sleep(10 * time.Millisecond)
				os.Chmod(p, 0o644)
			}},
		{name: "chown", rootOnly: true, want: "owner", full: 1,
			after: func(t *testing.T, m *move) { os.Lchown(filepath.Join(m.src, "x"), 4242, 4343) }},
		{name: "xattr added to SRC", want: "lacks the xattr", full: 1,
			after: func(t *testing.T, m *move) { setx(t, filepath.Join(m.src, "x"), "user.new", "1") }},
		{name: "xattr removed from DST", want: "lacks the xattr",
			after: func(t *testing.T, m *move) {
				if err := unix.Removexattr(filepath.Join(m.dst, "x"), "user.kept"); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "xattr of another value in DST", want: "DST differs: xattr",
			after: func(t *testing.T, m *move) { setx(t, filepath.Join(m.dst, "x"), "user.kept", "other") }},
		// An xattr only DST has (a capability or an ACL the source lost
		// after its copy) would live on: kept.
		{name: "extra xattr in DST", want: "it has the xattr user.extra",
			after: func(t *testing.T, m *move) { setx(t, filepath.Join(m.dst, "x"), "user.extra", "1") }},
		{name: "record: changed while copied", want: "changed while it was copied",
			after: func(t *testing.T, m *move) { m.setRecord(t, "x", plan.CopiedChanged, nil, false) }},
		{name: "record: metadata incomplete", want: "metadata",
			after: func(t *testing.T, m *move) { m.setRecord(t, "x", plan.CopiedMetaIncomplete, nil, false) }},
		{name: "record: both flags", want: "kept in SRC",
			after: func(t *testing.T, m *move) {
				m.setRecord(t, "x", plan.CopiedChanged|plan.CopiedMetaIncomplete, nil, false)
			}},
		{name: "record: metadata incomplete, checksum", opt: Options{Checksum: true}, want: "metadata", full: 1,
			after: func(t *testing.T, m *move) { m.setRecord(t, "x", plan.CopiedMetaIncomplete, nil, false) }},
		{name: "record: changed while copied, checksum", opt: Options{Checksum: true}, want: "changed while it was copied", full: 1,
			after: func(t *testing.T, m *move) { m.setRecord(t, "x", plan.CopiedChanged, nil, false) }},
		{name: "no record: full comparison", removed: true, full: 1,
			after: func(t *testing.T, m *move) { m.setRecord(t, "x", 0, nil, true) }},
		{name: "no record, DST content differs", want: "content", full: 1,
			after: func(t *testing.T, m *move) {
				m.setRecord(t, "x", 0, nil, true)
				rewrite(t, filepath.Join(m.dst, "x"), strings.ToUpper(content))
			}},
		{name: "record of another ctime: full comparison", removed: true, full: 1,
			after: func(t *testing.T, m *move) { m.setRecord(t, "x", 0, &unix.Timespec{Sec: 1, Nsec: 2}, false) }},
		{name: "record matches: no content comparison", removed: true,
			after: func(t *testing.T, m *move) {
				// Only a full comparison would see this.
				rewrite(t, filepath.Join(m.dst, "x"), strings.ToUpper(content))
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.rootOnly && !root {
				t.Skip("needs root")
			}
			m := newMove(t, func(src string) {
				x := filepath.Join(src, "x")
				os.WriteFile(x, []byte(content), 0o644)
				setx(t, x, "user.kept", "v")
				os.WriteFile(filepath.Join(src, "y"), []byte("a bystander"), 0o644)
			}, 0)
			if c.after != nil {
				c.after(t, m)
			}
			res := m.remove(t, c.opt, false)
			t.Logf("kept: %q; stats: removed %d, kept %d, full %d, compared %d", res.errs, res.r.Stats.Removed.Load(), res.r.Stats.Kept.Load(),
				res.r.Stats.FullChecks.Load(), res.r.Stats.Compared.Load())
			if exists(filepath.Join(m.src, "y")) {
				t.Errorf("the bystander y was kept: %s", res.errs["y"])
			}
			x := exists(filepath.Join(m.src, "x"))
			switch {
			case c.removed && x:
				t.Errorf("x was kept: %s", res.errs["x"])
			case !c.removed && !x:
				t.Errorf("x was removed, want it kept with %q", c.want)
			case !c.removed && !strings.Contains(res.errs["x"], c.want):
				t.Errorf("x kept with %q, want %q", res.errs["x"], c.want)
			}
			if c.removed && len(res.errs) > 0 {
				t.Errorf("errors: %q", res.errs)
			}
			if got := res.r.Stats.FullChecks.Load(); got != c.full {
				t.Errorf("%d full comparisons, want %d", got, c.full)
			}
			if c.full == 0 && res.r.Stats.Compared.Load() != 0 {
				t.Errorf("%d bytes compared without a full comparison", res.r.Stats.Compared.Load())
			}
			if !exists(filepath.Join(m.dst, "x")) || !exists(filepath.Join(m.dst, "y")) {
				t.Error("DST lost a file")
			}
			if q := quarantined(t, m.src); len(q) > 0 {
				t.Errorf("quarantine names left in SRC: %q", q)
			}
		})
	}
}

func setx(t *testing.T, p, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
		t.Fatalf("setxattr %s on %s: %v", name, p, err)
	}
}

// quarantined lists the quarantine names anywhere under dir.
func quarantined(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(fi.Name(), ".hlcp-rm-") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMoveHardLinks: a group of hard links in several directories is
// removed path by path (each unlink moves the inode's ctime, which the
// remover follows); one whose copy was changed is kept whole.
func TestMoveHardLinks(t *testing.T) {
	for _, changed := range []bool{false, true} {
		t.Run(fmt.Sprintf("dstChanged=%v", changed), func(t *testing.T) {
			m := newMove(t, func(src string) {
				os.Mkdir(filepath.Join(src, "d1"), 0o755)
				os.Mkdir(filepath.Join(src, "d2"), 0o755)
				os.WriteFile(filepath.Join(src, "a"), []byte(content), 0o644)
				for _, l := range []string{"b", "d1/c", "d1/d", "d2/e"} {
					os.Link(filepath.Join(src, "a"), filepath.Join(src, l))
				}
			}, 0)
			if changed {
				rewrite(t, filepath.Join(m.dst, "a"), strings.ToUpper(content))
				m.setRecord(t, "a", 0, nil, true) // no record: compared in full
			}
			res := m.remove(t, Options{}, true)
			t.Logf("kept: %q", res.errs)
			for _, p := range []string{"a", "b", "d1/c", "d1/d", "d2/e"} {
				if exists(filepath.Join(m.src, p)) != changed {
					t.Errorf("%s: in SRC %v, want %v", p, !changed, changed)
				}
			}
			if n := res.r.Stats.Removed.Load(); changed && n != 0 || !changed && n != 5 {
				t.Errorf("%d removed", n)
			}
			if q := quarantined(t, m.src); len(q) > 0 {
				t.Errorf("quarantine names left in SRC: %q", q)
			}
			if names, more := res.r.Leftovers(10); !changed && (len(names) > 0 || more > 0) {
				t.Errorf("SRC not empty: %q", names)
			}
		})
	}
}

// TestLeftoverQuarantine: a source path that a killed run set aside under
// its quarantine name (and did not unlink) is handled by the next run:
// checked (in full) and removed when its copy matches, renamed back and
// kept when it does not. A quarantine-like name of another inode is not
// touched.
func TestLeftoverQuarantine(t *testing.T) {
	cases := []struct {
		name    string
		before  func(t *testing.T, m *move)
		removed bool
		want    string
	}{
		{name: "copy matches", removed: true},
		{name: "copy differs", want: "content",
			before: func(t *testing.T, m *move) { rewrite(t, filepath.Join(m.dst, "x"), strings.ToUpper(content)) }},
		{name: "copy gone", want: "not in DST",
			before: func(t *testing.T, m *move) { os.Remove(filepath.Join(m.dst, "x")) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newMove(t, func(src string) {
				os.WriteFile(filepath.Join(src, "x"), []byte(content), 0o644)
			}, 0)
			if c.before != nil {
				c.before(t, m)
			}
			var st unix.Stat_t
			x := filepath.Join(m.src, "x")
			unix.Lstat(x, &st)
			q := filepath.Join(m.src, QuarantineName(st.Dev, st.Ino, []byte("x")))
			if err := os.Rename(x, q); err != nil {
				t.Fatal(err)
			}
			res := m.remove(t, Options{}, false)
			t.Logf("kept: %q", res.errs)
			if exists(q) {
				t.Errorf("the quarantine name is still there")
			}
			if c.removed {
				if exists(x) || len(res.errs) > 0 || res.r.Stats.Removed.Load() != 1 {
					t.Errorf("x in SRC %v, errors %q, %d removed; want it removed", exists(x), res.errs, res.r.Stats.Removed.Load())
				}
				if res.r.Stats.FullChecks.Load() != 1 {
					t.Errorf("%d full comparisons, want 1", res.r.Stats.FullChecks.Load())
				}
				return
			}
			var now unix.Stat_t
			if err := unix.Lstat(x, &now); err != nil || now.Ino != st.Ino {
				t.Errorf("x not put back: %v (inode %d, want %d)", err, now.Ino, st.Ino)
			}
			if !strings.Contains(res.errs["x"], c.want) {
				t.Errorf("x kept with %q, want %q", res.errs["x"], c.want)
			}
			if b, _ := os.ReadFile(x); string(b) != content {
				t.Errorf("x holds %q", b)
			}
		})
	}
	t.Run("another inode", func(t *testing.T) {
		m := newMove(t, func(src string) {
			os.WriteFile(filepath.Join(src, "x"), []byte(content), 0o644)
		}, 0)
		var st unix.Stat_t
		x := filepath.Join(m.src, "x")
		unix.Lstat(x, &st)
		q := filepath.Join(m.src, QuarantineName(st.Dev, st.Ino, []byte("x")))
		// x's name is gone, and what has its quarantine name is another
		// file (made first, so that it does not get x's freed inode
		// number): a new version that a killed run set aside in x's
		// place. It goes back to x, and is kept.
		os.WriteFile(q, []byte("not ours"), 0o644)
		os.Remove(x)
		res := m.remove(t, Options{}, false)
		if b, err := os.ReadFile(x); err != nil || string(b) != "not ours" {
			t.Errorf("the other file, at x: %q, %v", b, err)
		}
		if exists(q) || len(res.errs) != 1 || !strings.Contains(res.errs["x"], "another file") {
			t.Errorf("quarantine name left %v, errors %q; want it put back as x and reported", exists(q), res.errs)
		}
	})
	t.Run("original name back too", func(t *testing.T) {
		// Both the original name and the quarantine name exist, for one
		// inode (a hard link made at the old name since): the path is
		// checked, cannot be set aside (the quarantine name is taken),
		// and is kept; nothing is lost.
		m := newMove(t, func(src string) {
			os.WriteFile(filepath.Join(src, "x"), []byte(content), 0o644)
		}, 0)
		var st unix.Stat_t
		x := filepath.Join(m.src, "x")
		unix.Lstat(x, &st)
		q := filepath.Join(m.src, QuarantineName(st.Dev, st.Ino, []byte("x")))
		if err := os.Link(x, q); err != nil {
			t.Fatal(err)
		}
		res := m.remove(t, Options{}, false)
		t.Logf("kept: %q", res.errs)
		if !exists(x) || !exists(q) {
			t.Errorf("x in SRC %v, %s in SRC %v; want both kept", exists(x), filepath.Base(q), exists(q))
		}
		if !strings.Contains(res.errs["x"], "set aside") || res.r.Stats.Removed.Load() != 0 {
			t.Errorf("x kept with %q, %d removed", res.errs["x"], res.r.Stats.Removed.Load())
		}
	})
}

// TestLeftoverQuarantineOfALink: a killed run had removed a, the first
// path of a hard-link group, and set aside b, the second one in the same
// directory. The next run finds a missing and the group's quarantine name
// there: it is b's, and must go back to b when it is kept.
func TestLeftoverQuarantineOfALink(t *testing.T) {
	m := newMove(t, func(src string) {
		os.WriteFile(filepath.Join(src, "a"), []byte(content), 0o644)
		os.Link(filepath.Join(src, "a"), filepath.Join(src, "b"))
	}, 0)
	var st unix.Stat_t
	a, b := filepath.Join(m.src, "a"), filepath.Join(m.src, "b")
	unix.Lstat(a, &st)
	os.Remove(a)
	if err := os.Rename(b, filepath.Join(m.src, QuarantineName(st.Dev, st.Ino, []byte("b")))); err != nil {
		t.Fatal(err)
	}
	// The copy no longer matches: the file is to be kept.
	rewrite(t, filepath.Join(m.dst, "b"), strings.ToUpper(content))
	res := m.remove(t, Options{}, false)
	t.Logf("kept: %q", res.errs)
	if !exists(b) || exists(a) {
		t.Errorf("after the run: a in SRC %v, b in SRC %v; want only b, its name before the killed run", exists(a), exists(b))
	}
}

// TestLeftoverQuarantineRenumbered: a run set a path aside and was killed;
// after a reboot that renumbered SRC's device, the next run (which maps
// the scan's device number to the new one) must still find it.
func TestLeftoverQuarantineRenumbered(t *testing.T) {
	const scanDev = 0x12345
	m := newMove(t, func(src string) {
		os.WriteFile(filepath.Join(src, "x"), []byte(content), 0o644)
	}, scanDev)
	var st unix.Stat_t
	x := filepath.Join(m.src, "x")
	unix.Lstat(x, &st)
	// The killed run, before the reboot, saw the device the scan saw.
	q := filepath.Join(m.src, QuarantineName(scanDev, st.Ino, []byte("x")))
	if err := os.Rename(x, q); err != nil {
		t.Fatal(err)
	}
	res := m.remove(t, Options{}, false)
	t.Logf("kept: %q, gone %d, removed %d", res.errs, res.r.Stats.Gone.Load(), res.r.Stats.Removed.Load())
	if exists(q) {
		t.Errorf("the leftover %s is still in SRC (x counted as gone: %d)", filepath.Base(q), res.r.Stats.Gone.Load())
	}
}

// TestDevMap: with SRC's device renumbered since the scan, the paths
// are removed (the quarantine name uses the device they have now).
func TestDevMap(t *testing.T) {
	m := newMove(t, func(src string) {
		os.WriteFile(filepath.Join(src, "x"), []byte(content), 0o644)
		os.Link(filepath.Join(src, "x"), filepath.Join(src, "y"))
	}, 0x12345)
	res := m.remove(t, Options{}, false)
	if exists(filepath.Join(m.src, "x")) || exists(filepath.Join(m.src, "y")) || len(res.errs) > 0 {
		t.Errorf("errors %q", res.errs)
	}
	if q := quarantined(t, m.src); len(q) > 0 {
		t.Errorf("quarantine names left in SRC: %q", q)
	}
}

// TestRenameNoReplace: the rename that sets a path aside never replaces
// what has the new name.
func TestRenameNoReplace(t *testing.T) {
	dir := t.TempDir()
	fd := openDir(t, dir)
	os.WriteFile(filepath.Join(dir, "a"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(dir, "b"), []byte("b"), 0o644)
	if err := renameNoReplace(fd, "a", "b"); !errors.Is(err, unix.EEXIST) {
		t.Errorf("rename over an existing name: %v, want EEXIST", err)
	}
	for n, want := range map[string]string{"a": "a", "b": "b"} {
		if b, err := os.ReadFile(filepath.Join(dir, n)); err != nil || string(b) != want {
			t.Errorf("%s holds %q, %v", n, b, err)
		}
	}
	// Nor a symlink, nor a dangling one, nor a directory.
	os.Symlink("nowhere", filepath.Join(dir, "dangling"))
	os.Mkdir(filepath.Join(dir, "dir"), 0o755)
	for _, n := range []string{"dangling", "dir"} {
		if err := renameNoReplace(fd, "a", n); !errors.Is(err, unix.EEXIST) {
			t.Errorf("rename over %s: %v, want EEXIST", n, err)
		}
	}
	if err := renameNoReplace(fd, "a", "c"); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(dir, "a")) || !exists(filepath.Join(dir, "c")) {
		t.Error("a was not renamed to c")
	}
	if err := renameNoReplace(fd, "a", "d"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("rename of a missing name: %v, want ENOENT", err)
	}
}

// TestNoQuarantineLeft: after a removal, in which some paths are removed
// and others kept, no quarantine name is left anywhere in SRC, every kept
// path is where it was, and every removed one has its copy.
func TestNoQuarantineLeft(t *testing.T) {
	m := newMove(t, func(src string) {
		dirs := []string{"d1", "d1/d2", "d3"}
		for _, d := range dirs {
			os.Mkdir(filepath.Join(src, d), 0o755)
		}
		for i := 0; i < 40; i++ {
			os.WriteFile(filepath.Join(src, dirs[i%3], fmt.Sprintf("f%02d", i)), []byte(fmt.Sprint(i)), 0o644)
		}
		os.WriteFile(filepath.Join(src, "top"), []byte("top"), 0o644)
		os.Link(filepath.Join(src, "top"), filepath.Join(src, "d1", "top-link"))
		os.Link(filepath.Join(src, "top"), filepath.Join(src, "top-link"))
		os.Symlink("top", filepath.Join(src, "sym"))
		unix.Mkfifo(filepath.Join(src, "d3", "fifo"), 0o600)
	}, 0)
	var before []string
	filepath.Walk(m.src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(m.src, p)
			before = append(before, rel)
		}
		return nil
	})
	// Kept: one changed in SRC, one whose copy is gone.
	os.Chmod(filepath.Join(m.src, "d1/d2/f01"), 0o600)
	os.Remove(filepath.Join(m.dst, "d3/f02"))
	res := m.remove(t, Options{}, true)
	if q := quarantined(t, m.src); len(q) > 0 {
		t.Errorf("quarantine names left in SRC: %q", q)
	}
	var kept []string
	for _, rel := range before {
		if exists(filepath.Join(m.src, rel)) {
			kept = append(kept, rel)
		} else if !exists(filepath.Join(m.dst, rel)) {
			t.Errorf("%s is in neither tree", rel)
		}
	}
	sort.Strings(kept)
	if fmt.Sprint(kept) != "[d1/d2/f01 d3/f02]" {
		t.Errorf("kept %q (errors %q)", kept, res.errs)
	}
	if n := res.r.Stats.Removed.Load(); n != int64(len(before)-2) {
		t.Errorf("%d removed of %d", n, len(before)-2)
	}
	if exists(filepath.Join(m.src, "d1", "d2")) != true || exists(filepath.Join(m.src, "d1/top-link")) {
		t.Error("directories: d1/d2 must stay (it holds a kept file)")
	}
}
