package copier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/plan"
)

// copyTree makes the directories of b in dst and copies its plan, with opt
// (Jobs defaults to 2). It returns the copier, still open.
func copyTree(t *testing.T, src, dst string, b built, opt Options) *Copier {
	t.Helper()
	if opt.Jobs == 0 {
		opt.Jobs = 2
	}
	sfd, dfd := openRoot(t, src), openRoot(t, dst)
	t.Cleanup(func() { unix.Close(sfd); unix.Close(dfd) })
	c, err := New(context.Background(), sfd, dfd, b.tab, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.MakeDirs(1, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Copy(b.in, Marks{}, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	return c
}

// groupRecord is the copy record of one group, with the source path of
// the group's first entry.
type groupRecord struct {
	index int64
	rel   string
	ctime unix.Timespec
	flags uint8
	ok    bool
}

// records reads the copy record of every group of b, in plan order.
func records(t *testing.T, b built, cp *plan.Copied) []groupRecord {
	t.Helper()
	var out []groupRecord
	var prev []byte
	gi := int64(-1)
	for _, pe := range b.ents {
		if prev != nil && plan.SameInode(prev, pe.rec) {
			continue
		}
		prev = pe.rec
		gi++
		e, err := plan.DecodeEntry(pe.rec)
		if err != nil {
			t.Fatal(err)
		}
		ctime, flags, ok, err := cp.Get(gi)
		if err != nil {
			t.Fatalf("group %d (%s): %v", gi, e.Name, err)
		}
		out = append(out, groupRecord{gi, b.tab.Rel(e.Dir, e.Name), ctime, flags, ok})
	}
	if gi+1 != b.groups {
		t.Fatalf("%d groups read, the plan has %d", gi+1, b.groups)
	}
	return out
}

// TestCopiedRecords: with copy records asked for (a move), every group the
// copy created has one, holding the source inode's ctime and no flag, over
// several create tasks and every kind of entry.
func TestCopiedRecords(t *testing.T) {
	for _, viaSet := range []bool{false, true} {
		t.Run(fmt.Sprintf("SetCopied=%v", viaSet), func(t *testing.T) {
			src, dst, state := trees(t, "")
			for i := 0; i < 3*maxCreateRecs+5; i++ {
				os.WriteFile(filepath.Join(src, fmt.Sprintf("f%03d", i)), []byte(strings.Repeat("x", i)), 0o644)
			}
			linked(t, src, 5, "l%d")
			os.Symlink("f001", filepath.Join(src, "sym"))
			if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o640); err != nil {
				t.Fatal(err)
			}
			os.Mkdir(filepath.Join(src, "sub"), 0o755)
			os.WriteFile(filepath.Join(src, "sub", "g"), []byte("in a subdirectory"), 0o600)
			os.Link(filepath.Join(src, "sub", "g"), filepath.Join(src, "g-link"))
			b := buildPlanFull(t, src, state)
			cp, info, err := plan.CreateCopied(b.state, b.groups)
			if err != nil {
				t.Fatal(err)
			}
			defer cp.Close()
			if info.Records != b.groups {
				t.Fatalf("copy records for %d groups, want %d", info.Records, b.groups)
			}
			var errs []string
			var mu sync.Mutex
			opt := Options{Jobs: 3, Owner: os.Geteuid() == 0, OnError: func(rel string, err error) {
				mu.Lock()
				errs = append(errs, rel+": "+err.Error())
				mu.Unlock()
			}}
			if !viaSet {
				opt.Copied = cp
			}
			sfd, dfd := openRoot(t, src), openRoot(t, dst)
			defer unix.Close(sfd)
			defer unix.Close(dfd)
			c, err := New(context.Background(), sfd, dfd, b.tab, opt)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if viaSet {
				c.SetCopied(cp)
			}
			if err := c.MakeDirs(1, nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Copy(b.in, Marks{}, nil, nil, 0); err != nil {
				t.Fatal(err)
			}
			if len(errs) > 0 {
				t.Fatalf("copy errors: %q", errs)
			}
			if got := c.Stats.Groups.Load(); got != b.groups {
				t.Fatalf("%d groups created, the plan has %d", got, b.groups)
			}
			for _, r := range records(t, b, cp) {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(src, r.rel), &st); err != nil {
					t.Fatal(err)
				}
				switch {
				case !r.ok:
					t.Errorf("group %d (%s): no copy record", r.index, r.rel)
				case r.ctime != st.Ctim:
					t.Errorf("group %d (%s): recorded ctime %v, the source has %v", r.index, r.rel, r.ctime, st.Ctim)
				case r.flags != 0:
					t.Errorf("group %d (%s): flags %b, want none", r.index, r.rel, r.flags)
				}
			}
		})
	}
}

// TestCopiedMetaIncomplete: a file whose xattr the destination refuses
// (a value too large for an ext4 inode without ea_inode, from a tmpfs
// source that holds it) gets a copy record flagged
// CopiedMetaIncomplete, which keeps its source in a move; the other
// files' records have no flag.
func TestCopiedMetaIncomplete(t *testing.T) {
	var sfs unix.Statfs_t
	if unix.Statfs("/dev/shm", &sfs) != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm for a source that holds large xattr values")
	}
	sbase, err := os.MkdirTemp("/dev/shm", "hlcp-xattr-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sbase)
	src, dst, state := trees(t, sbase)
	big := []byte(strings.Repeat("v", 8000))
	// The destination must refuse it, else there is nothing to see here.
	probe := filepath.Join(dst, "probe")
	os.WriteFile(probe, nil, 0o600)
	perr := unix.Setxattr(probe, "user.big", big, 0)
	os.Remove(probe)
	if perr == nil {
		t.Skipf("%s takes an xattr value of %d bytes (ea_inode?): no refused xattr to test with", dst, len(big))
	}
	for _, n := range []string{"a-big", "b-ok", "c-plain"} {
		if err := os.WriteFile(filepath.Join(src, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Setxattr(filepath.Join(src, "a-big"), "user.big", big, 0); err != nil {
		t.Skipf("the tmpfs source refuses user xattrs: %v", err)
	}
	if err := unix.Setxattr(filepath.Join(src, "b-ok"), "user.small", []byte("s"), 0); err != nil {
		t.Fatal(err)
	}
	b := buildPlanFull(t, src, state)
	cp, _, err := plan.CreateCopied(b.state, b.groups)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	var mu sync.Mutex
	warns := map[string]string{}
	var errs []string
	copyTree(t, src, dst, b, Options{Copied: cp, Owner: os.Geteuid() == 0,
		OnWarn: func(key, msg string) { mu.Lock(); warns[key] = msg; mu.Unlock() },
		OnError: func(rel string, err error) {
			mu.Lock()
			errs = append(errs, rel+": "+err.Error())
			mu.Unlock()
		}})
	t.Logf("warnings %q, errors %q", warns, errs)
	if len(errs) > 0 {
		t.Errorf("errors: %q", errs)
	}
	warned := false
	for k := range warns {
		if strings.HasPrefix(k, "xattr user") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning about the refused user xattr: %q", warns)
	}
	want := map[string]uint8{"a-big": plan.CopiedMetaIncomplete, "b-ok": 0, "c-plain": 0}
	for _, r := range records(t, b, cp) {
		if !r.ok {
			t.Errorf("%s: no copy record", r.rel)
			continue
		}
		if r.flags != want[r.rel] {
			t.Errorf("%s: flags %b, want %b", r.rel, r.flags, want[r.rel])
		}
	}
	if v, err := getxattr(filepath.Join(dst, "b-ok"), "user.small"); err != nil || v != "s" {
		t.Errorf("b-ok's xattr in DST: %q, %v", v, err)
	}
}

func getxattr(path, name string) (string, error) {
	b := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(path, name, b)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// touched makes sure the directory p's mtime is not the one the scan saw
// (an entry added in the same clock tick as the scan's stat may leave it
// as it was).
func touched(t *testing.T, p string, scanned unix.Timespec) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mtim == scanned {
		later := time.Unix(scanned.Sec+1, scanned.Nsec)
		if err := os.Chtimes(p, later, later); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNewEntries: entries added to (or renamed within) a source directory
// after the scan changed its mtime; Finish reports each of them, in the
// root and below it, and nothing from directories that did not change.
func TestNewEntries(t *testing.T) {
	src, dst, state := trees(t, "")
	for _, d := range []string{"sub", "sub/deep", "quiet"} {
		os.Mkdir(filepath.Join(src, d), 0o755)
	}
	for _, f := range []string{"top", "sub/f", "sub/deep/g", "quiet/q"} {
		os.WriteFile(filepath.Join(src, f), []byte(f), 0o644)
	}
	b := buildPlanFull(t, src, state)
	mtimes := map[string]unix.Timespec{}
	var d plan.Dir
	for id := uint32(0); id < b.tab.Len(); id++ {
		if err := b.tab.Get(id, &d); err != nil {
			t.Fatal(err)
		}
		mtimes[b.tab.Path(id)] = d.Mtime
	}
	var mu sync.Mutex
	var got []string
	var others []string
	c := copyTree(t, src, dst, b, Options{Owner: os.Geteuid() == 0, OnError: func(rel string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, errAdded) && strings.Contains(err.Error(), "added (or renamed) after the scan") {
			got = append(got, rel)
		} else {
			others = append(others, rel+": "+err.Error())
		}
	}})
	// After the copy: new files, a new directory, a rename.
	os.WriteFile(filepath.Join(src, "new-top"), []byte("new"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "deep", "new-deep"), []byte("new"), 0o644)
	os.Mkdir(filepath.Join(src, "sub", "new-dir"), 0o755)
	if err := os.Rename(filepath.Join(src, "sub", "f"), filepath.Join(src, "sub", "f-renamed")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"", "sub", "sub/deep"} {
		touched(t, filepath.Join(src, p), mtimes[p])
	}
	if err := c.Finish(b.tab.Len(), true, nil); err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	want := []string{"new-top", "sub/deep/new-deep", "sub/f-renamed", "sub/new-dir"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reported as added after the scan: %q, want %q", got, want)
	}
	if len(others) > 0 {
		t.Errorf("other errors: %q", others)
	}
	if n := c.Stats.Errors.Load(); n != int64(len(want)) {
		t.Errorf("Stats.Errors %d, want %d", n, len(want))
	}
	// Finish gave DST's directories the scanned times: a second Finish
	// with SRC back to its scanned mtimes reports nothing.
	got = nil
	for _, p := range []string{"", "sub", "sub/deep"} {
		m := mtimes[p]
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, p), []unix.Timespec{m, m}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Finish(b.tab.Len(), true, nil); err != nil {
		t.Fatal(err)
	}
	if len(got) > 0 {
		t.Errorf("directories with their scanned mtime: reported %q", got)
	}
}
