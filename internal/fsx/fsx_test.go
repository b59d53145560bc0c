package fsx

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hlcp/internal/budget"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dirent encodes one linux_dirent64 record.
func dirent(ino uint64, typ uint8, name string) []byte {
	reclen := (19 + len(name) + 1 + 7) &^ 7
	b := make([]byte, reclen)
	binary.LittleEndian.PutUint64(b[0:], ino)
	binary.LittleEndian.PutUint16(b[16:], uint16(reclen))
	b[18] = typ
	copy(b[19:], name)
	return b
}

func TestParseDirents(t *testing.T) {
	type ent struct {
		ino  uint64
		typ  uint8
		name string
	}
	long := string(bytes.Repeat([]byte("n"), 255))
	cases := []struct {
		name    string
		buf     []byte
		want    []ent
		dot     uint64
		wantErr bool
	}{
		{"empty", nil, nil, 0, false},
		{"dots skipped", append(dirent(5, TypeDir, "."), dirent(2, TypeDir, "..")...), nil, 5, false},
		{"mixed", bytes.Join([][]byte{dirent(5, TypeDir, "."), dirent(7, TypeReg, "a"), dirent(8, TypeLnk, "caf\xe9\nx"), dirent(9, TypeUnknown, long)}, nil),
			[]ent{{7, TypeReg, "a"}, {8, TypeLnk, "caf\xe9\nx"}, {9, TypeUnknown, long}}, 5, false},
		{"short record", []byte{1, 2, 3}, nil, 0, true},
		{"bad reclen", func() []byte { b := dirent(1, TypeReg, "x"); binary.LittleEndian.PutUint16(b[16:], 200); return b }(), nil, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []ent
			var dot uint64
			err := ParseDirents(c.buf, func(i uint64) { dot = i }, func(ino uint64, typ uint8, name []byte) {
				got = append(got, ent{ino, typ, string(name)})
			})
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, c.wantErr)
			}
			if c.wantErr {
				return
			}
			if len(got) != len(c.want) || dot != c.dot {
				t.Fatalf("got %v dot %d, want %v dot %d", got, dot, c.want, c.dot)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("entry %d: %v, want %v", i, got[i], c.want[i])
				}
			}
		})
	}
}

// TestParseDirentsReal compares ParseDirents on a real getdents buffer with
// os.ReadDir.
func TestParseDirentsReal(t *testing.T) {
	dir := t.TempDir()
	names := map[string]bool{"plain": true, "caf\xe9": true, "new\nline": true, string(bytes.Repeat([]byte("z"), 255)): true}
	for n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	names["sub"] = true
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	seen := map[string]uint8{}
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if err := ParseDirents(buf[:n], nil, func(ino uint64, typ uint8, name []byte) { seen[string(name)] = typ }); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != len(names) {
		t.Fatalf("saw %d names, want %d", len(seen), len(names))
	}
	for n := range names {
		want := uint8(TypeReg)
		if n == "sub" {
			want = TypeDir
		}
		if seen[n] != want && seen[n] != TypeUnknown {
			t.Errorf("%q: type %d want %d", n, seen[n], want)
		}
	}
}

func FuzzParseDirents(f *testing.F) {
	f.Add(dirent(1, TypeReg, "a"))
	f.Add(append(dirent(1, TypeDir, "."), dirent(3, TypeLnk, "xyz")...))
	f.Fuzz(func(t *testing.T, b []byte) {
		total := 0
		ParseDirents(b, nil, func(ino uint64, typ uint8, name []byte) {
			if len(name) == 0 || bytes.IndexByte(name, 0) >= 0 {
				t.Fatalf("bad name %q", name)
			}
			total += len(name)
		})
		if total > len(b) {
			t.Fatalf("names longer than the buffer")
		}
	})
}

func TestTypeOfMode(t *testing.T) {
	for _, c := range []struct {
		mode uint32
		want uint8
	}{
		{unix.S_IFREG | 0o644, TypeReg}, {unix.S_IFDIR | 0o755, TypeDir}, {unix.S_IFLNK, TypeLnk},
		{unix.S_IFIFO, TypeFifo}, {unix.S_IFSOCK, TypeSock}, {unix.S_IFCHR, TypeChr}, {unix.S_IFBLK, TypeBlk}, {0, TypeUnknown},
	} {
		if got := TypeOfMode(c.mode); got != c.want {
			t.Errorf("TypeOfMode(%o) = %d, want %d", c.mode, got, c.want)
		}
	}
}

// TestCopyData copies regular and sparse files with every method reachable
// here and checks content, size and (for sparse) that holes stayed holes.
func TestCopyData(t *testing.T) {
	dir := t.TempDir()
	rnd := func(n int) []byte { b := make([]byte, n); rand.Read(b); return b }
	type region struct {
		off  int64
		data []byte
	}
	cases := []struct {
		name   string
		size   int64
		parts  []region
		sparse bool
	}{
		{"empty", 0, nil, false},
		{"small", 5, []region{{0, []byte("hello")}}, false},
		{"3MiB", 3 << 20, []region{{0, rnd(3 << 20)}}, false},
		{"sparse middle", 16 << 20, []region{{4 << 20, rnd(8192)}}, true},
		{"sparse leading data trailing hole", 32 << 20, []region{{0, rnd(4096)}, {20 << 20, rnd(4096)}}, true},
		{"all hole", 8 << 20, nil, true},
	}
	for _, mode := range []string{"", "direct", "sendfile", "read-write"} {
		forceRW := mode != ""
		for _, c := range cases {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				sp := filepath.Join(dir, "s-"+c.name)
				f, _ := os.Create(sp)
				for _, r := range c.parts {
					f.WriteAt(r.data, r.off)
				}
				f.Truncate(c.size)
				f.Close()
				sfd, _ := unix.Open(sp, unix.O_RDONLY, 0)
				defer unix.Close(sfd)
				dp := sp + ".copy"
				os.Remove(dp)
				dfd, _ := unix.Open(dp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
				dc := &DataCopier{Caps: NewCaps()}
				switch mode {
				case "direct": // across filesystems: files of DirectMin and more
					dc.Caps.m[devPair{1, 2}] = caps{clone: capNo, cfr: capNo}
				case "sendfile":
					dc.Caps.m[devPair{1, 2}] = caps{clone: capNo, cfr: capNo, direct: capNo}
				case "read-write":
					dc.Caps.m[devPair{1, 2}] = caps{clone: capNo, cfr: capNo, sendfile: capNo, direct: capNo}
				}
				n, m, err := dc.Copy(sfd, dfd, c.size, c.sparse, 1, 2)
				unix.Close(dfd)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]Method{"direct": MethodSendfile, "sendfile": MethodSendfile, "read-write": MethodReadWrite}[mode]
				if mode == "direct" && c.size >= DirectMin && !c.sparse {
					want = MethodDirect
				}
				if forceRW && c.size > 0 && len(c.parts) > 0 && m != want {
					t.Errorf("method %v, want %v", m, want)
				}
				a, _ := os.ReadFile(sp)
				b, _ := os.ReadFile(dp)
				if !bytes.Equal(a, b) {
					t.Fatalf("content differs (copied %d bytes by %v)", n, m)
				}
				if c.sparse {
					var st unix.Stat_t
					unix.Stat(dp, &st)
					if st.Blocks*512 >= c.size/2 {
						t.Errorf("sparse copy allocated %d bytes of %d", st.Blocks*512, c.size)
					}
				}
			})
		}
	}
}

func TestCopyDataShort(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("0123456789"), 0o644)
	sfd, _ := unix.Open(p, unix.O_RDONLY, 0)
	defer unix.Close(sfd)
	dfd, _ := unix.Open(p+".c", unix.O_WRONLY|unix.O_CREAT, 0o600)
	defer unix.Close(dfd)
	// The stat said 20 bytes but the file has 10: it shrank meanwhile.
	_, _, err := (&DataCopier{Caps: NewCaps()}).Copy(sfd, dfd, 20, false, 1, 1)
	if !errors.Is(err, ErrShort) {
		t.Fatalf("err = %v, want ErrShort", err)
	}
}

func TestXattrsCopy(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, nil, 0o644)
	os.WriteFile(b, nil, 0o644)
	big := bytes.Repeat([]byte{0, 1, 2, 255}, 500) // fits ext4's 4 KiB xattr block
	if err := unix.Setxattr(a, "user.small", []byte("v"), 0); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	if err := unix.Setxattr(a, "user.big", big, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(a, "user.empty", nil, 0); err != nil {
		t.Fatal(err)
	}
	sfd, _ := unix.Open(a, unix.O_RDONLY, 0)
	dfd, _ := unix.Open(b, unix.O_RDONLY, 0)
	defer unix.Close(sfd)
	defer unix.Close(dfd)
	var x Xattrs
	x.names, x.val = make([]byte, 8), make([]byte, 8) // force ERANGE growth
	var errs []*XattrError
	if err := x.CopyFd(sfd, dfd, func(e *XattrError) { errs = append(errs, e) }); err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Fatalf("set errors: %v", errs)
	}
	for name, want := range map[string][]byte{"user.small": []byte("v"), "user.big": big, "user.empty": {}} {
		got := make([]byte, 16384)
		n, err := unix.Getxattr(b, name, got)
		if err != nil || !bytes.Equal(got[:n], want) {
			t.Errorf("%s: %v %q", name, err, got[:max(0, min(n, 20))])
		}
	}
	// Symlinks through ProcPath: trusted.* works on symlinks as root.
	if os.Geteuid() == 0 {
		os.Symlink("x", filepath.Join(dir, "s1"))
		os.Symlink("x", filepath.Join(dir, "s2"))
		if err := unix.Lsetxattr(filepath.Join(dir, "s1"), "trusted.t", []byte("sym"), 0); err == nil {
			dfd, _ := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
			defer unix.Close(dfd)
			if err := x.CopyPath(ProcPath(dfd, "s1"), ProcPath(dfd, "s2"), func(e *XattrError) { t.Errorf("set: %v", e) }); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 16)
			n, err := unix.Lgetxattr(filepath.Join(dir, "s2"), "trusted.t", got)
			if err != nil || string(got[:n]) != "sym" {
				t.Errorf("symlink xattr not copied: %v %q", err, got[:max(n, 0)])
			}
		}
	}
}

func TestDirCache(t *testing.T) {
	dir := t.TempDir()
	// ids: 0 root, 1 a, 2 a/b, 3 a/b/c, 4 d; 5 is a symlink named like a dir.
	os.MkdirAll(filepath.Join(dir, "a", "b", "c"), 0o755)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.Symlink("/", filepath.Join(dir, "evil"))
	tree := map[uint32]struct {
		parent uint32
		name   string
	}{1: {0, "a"}, 2: {1, "b"}, 3: {2, "c"}, 4: {0, "d"}, 5: {0, "evil"}}
	root, _ := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(root)
	c := NewDirCache(root, func(id uint32) (uint32, string, error) {
		e, ok := tree[id]
		if !ok {
			return 0, "", errors.New("no such id")
		}
		return e.parent, e.name, nil
	}, unix.O_PATH, 2)
	for round := 0; round < 3; round++ {
		for _, id := range []uint32{3, 4, 2, 1, 3} {
			fd, err := c.Acquire(id)
			if err != nil {
				t.Fatalf("acquire %d: %v", id, err)
			}
			var st, want unix.Stat_t
			unix.Fstat(fd, &st)
			p := map[uint32]string{1: "a", 2: "a/b", 3: "a/b/c", 4: "d"}[id]
			unix.Stat(filepath.Join(dir, p), &want)
			if st.Ino != want.Ino {
				t.Errorf("id %d: wrong directory", id)
			}
			c.Release(id)
		}
	}
	if len(c.m) > 2+1 {
		t.Errorf("cache holds %d entries, cap 2 (+root)", len(c.m))
	}
	if _, err := c.Acquire(5); !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.ELOOP) {
		t.Errorf("a symlink must not be followed as a directory: err %v", err)
	}
	c.Close()
}

// TestRaiseFileLimit: a wish below the soft limit changes nothing; one
// above it gets as far as the hard limit (or past it, with the privilege
// to raise it), never less than before; the caches are sized from what is
// in force.
func TestRaiseFileLimit(t *testing.T) {
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Skip(err)
	}
	if got := RaiseFileLimit(before.Cur / 2); got != before.Cur {
		t.Errorf("RaiseFileLimit(%d) = %d, want the soft limit %d unchanged", before.Cur/2, got, before.Cur)
	}
	want := before.Max + 1000
	got := RaiseFileLimit(want)
	var after unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &after)
	t.Logf("limit before %d/%d, asked %d, got %d, now %d/%d", before.Cur, before.Max, want, got, after.Cur, after.Max)
	if got != after.Cur || after.Cur < before.Cur || after.Cur < min(want, before.Max) {
		t.Errorf("got %d, limit now %d/%d (was %d/%d)", got, after.Cur, after.Max, before.Cur, before.Max)
	}
	if n := budget.DirCacheSize(2, 0); n < 256 || int64(n) > (int64(after.Cur)-512)/4+256 {
		t.Errorf("budget.DirCacheSize(2, 0) = %d with a limit of %d", n, after.Cur)
	}
	for _, tc := range []struct {
		mem  int64
		want int
	}{
		{1 << 20, 1 << 20 / 2 / budget.DirCacheEntryBytes},
		{1, 256}, // at least 256
	} {
		if n := budget.DirCacheSize(2, tc.mem); n != min(tc.want, budget.DirCacheSize(2, 0)) {
			t.Errorf("budget.DirCacheSize(2, %d) = %d, want %d", tc.mem, n, tc.want)
		}
	}
}

// TestDirCacheEntryBytes measures a full cache's heap per entry against
// budget.DirCacheEntryBytes, which sizes the caches within the memory budget.
func TestDirCacheEntryBytes(t *testing.T) {
	dir := t.TempDir()
	const n = 2000
	for i := range n {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprintf("d%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	resolve := func(id uint32) (uint32, string, error) { return 0, fmt.Sprintf("d%d", id-1), nil }
	c := NewDirCache(root, resolve, unix.O_PATH, n+10)
	defer c.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for id := uint32(1); id <= n; id++ {
		if _, err := c.Acquire(id); err != nil {
			t.Fatal(err)
		}
		c.Release(id)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := int64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%d bytes of heap per cache entry", per)
	if per > budget.DirCacheEntryBytes {
		t.Errorf("%d bytes per entry, more than budget.DirCacheEntryBytes (%d)", per, budget.DirCacheEntryBytes)
	}
}

// TestRingLinkat: a batch of links through io_uring, with the results of
// the ones that fail (existing name, missing target, name too long) in
// their own slots; more links than the ring holds are refused.
func TestRingLinkat(t *testing.T) {
	r, err := NewRing(8)
	if err != nil {
		t.Skipf("no io_uring here (%v): the copier makes links one linkat at a time", err)
	}
	defer r.Close()
	a, b := t.TempDir(), t.TempDir()
	for _, n := range []string{"x", "y", "taken"} {
		if err := os.WriteFile(filepath.Join(a, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(b, "taken"), nil, 0o644)
	afd, _ := unix.Open(a, unix.O_PATH|unix.O_DIRECTORY, 0)
	bfd, _ := unix.Open(b, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(afd)
	defer unix.Close(bfd)
	long := bytes.Repeat([]byte("n"), 300)
	weird := []byte("new\nline\xff")
	cases := []struct {
		old, new string
		oldDir   int
		want     error
	}{
		{"x", "x1", afd, nil},
		{"x", "x2", afd, nil},
		{"y", string(weird), afd, nil},
		{"x", "taken", afd, unix.EEXIST},
		{"missing", "m", afd, unix.ENOENT},
		{"x", string(long), afd, unix.ENAMETOOLONG},
		{"x", "from-b", bfd, unix.ENOENT}, // x is in a, not in b
	}
	ops := make([]LinkOp, len(cases))
	for i, c := range cases {
		ops[i] = LinkOp{OldDir: c.oldDir, OldName: []byte(c.old), NewDir: bfd, NewName: []byte(c.new), Err: errors.New("not run")}
	}
	if err := r.Linkat(ops); err != nil {
		t.Fatal(err)
	}
	var ax unix.Stat_t
	unix.Stat(filepath.Join(a, "x"), &ax)
	for i, c := range cases {
		if !errors.Is(ops[i].Err, c.want) || (c.want == nil && ops[i].Err != nil) {
			t.Errorf("link %q -> %q: %v, want %v", c.old, c.new, ops[i].Err, c.want)
			continue
		}
		if c.want == nil {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(b, c.new), &st); err != nil {
				t.Errorf("%q: %v", c.new, err)
			} else if c.old == "x" && st.Ino != ax.Ino {
				t.Errorf("%q is inode %d, not x's %d", c.new, st.Ino, ax.Ino)
			}
		}
	}
	if ax.Nlink != 3 {
		t.Errorf("x has %d links, want 3", ax.Nlink)
	}
	// The ring is reusable, and refuses a batch larger than itself.
	if err := r.Linkat([]LinkOp{{OldDir: afd, OldName: []byte("y"), NewDir: bfd, NewName: []byte("y2")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(b, "y2")); err != nil {
		t.Error(err)
	}
	if err := r.Linkat(make([]LinkOp, r.Size()+1)); err == nil {
		t.Error("a batch larger than the ring was taken")
	}
}

// TestCopyDirect: data written with O_DIRECT from the mapped source, for
// sizes around the block size and the mapping window; the copy has the
// source's size and bytes.
func TestCopyDirect(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{1, 4095, 4096, 4097, directWindow - 1, directWindow, directWindow + 1, 2*directWindow + 12345} {
		data := make([]byte, size)
		rand.Read(data)
		sp, dp := filepath.Join(dir, "s"), filepath.Join(dir, "d")
		os.Remove(dp)
		if err := os.WriteFile(sp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sfd, _ := unix.Open(sp, unix.O_RDONLY, 0)
		dfd, err := unix.Open(dp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		d := DataCopier{Caps: NewCaps()}
		n, err := d.copyDirect(sfd, dfd, size, devPair{1, 2})
		unix.Close(sfd)
		unix.Close(dfd)
		if errors.Is(err, errNoDirect) {
			t.Skipf("%s takes no O_DIRECT writes", dir)
		}
		if err != nil || n != size {
			t.Fatalf("size %d: copied %d, %v", size, n, err)
		}
		got, _ := os.ReadFile(dp)
		if !bytes.Equal(got, data) {
			t.Errorf("size %d: the copy has %d bytes and differs", size, len(got))
		}
	}
}

// TestCopyDirectShrunk: a source shorter than the size its stat gave (it
// was truncated meanwhile) ends the copy with ErrShort, not a crash on
// the pages mapped past its end.
func TestCopyDirectShrunk(t *testing.T) {
	dir := t.TempDir()
	sp, dp := filepath.Join(dir, "s"), filepath.Join(dir, "d")
	os.WriteFile(sp, make([]byte, 10000), 0o644)
	sfd, _ := unix.Open(sp, unix.O_RDONLY, 0)
	defer unix.Close(sfd)
	dfd, _ := unix.Open(dp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	defer unix.Close(dfd)
	d := DataCopier{Caps: NewCaps()}
	n, err := d.copyDirect(sfd, dfd, 5*4096, devPair{1, 2})
	if errors.Is(err, errNoDirect) {
		t.Skipf("%s takes no O_DIRECT writes", dir)
	}
	t.Logf("copied %d: %v", n, err)
	if !errors.Is(err, ErrShort) {
		t.Errorf("copy of a source shorter than its size: %d, %v; want ErrShort", n, err)
	}
}

// TestDirCacheConcurrentMiss: many goroutines that need the same uncached
// directory at once open it once (and its parent once); a failing open is
// reported to all of them and tried again by the next Acquire.
func TestDirCacheConcurrentMiss(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
	names := map[uint32][2]any{1: {uint32(0), "a"}, 2: {uint32(1), "b"}, 3: {uint32(0), "missing"}}
	root, _ := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(root)
	c := NewDirCache(root, func(id uint32) (uint32, string, error) {
		time.Sleep(2 * time.Millisecond) // widen the window
		n := names[id]
		return n[0].(uint32), n[1].(string), nil
	}, unix.O_PATH, 100)
	defer c.Close()
	for _, id := range []uint32{2, 3} {
		var wg sync.WaitGroup
		errs := make([]error, 16)
		fds := make([]int, 16)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fds[i], errs[i] = c.Acquire(id)
			}()
		}
		wg.Wait()
		for i := range errs {
			if id == 2 && (errs[i] != nil || fds[i] != fds[0]) {
				t.Errorf("acquire %d: fd %d, %v (first got %d)", id, fds[i], errs[i], fds[0])
			}
			if id == 3 && !errors.Is(errs[i], unix.ENOENT) {
				t.Errorf("acquire of a missing directory: %v", errs[i])
			}
			if errs[i] == nil {
				c.Release(id)
			}
		}
	}
	if c.Opens != 2 {
		t.Errorf("%d opens for a and a/b", c.Opens)
	}
	os.Mkdir(filepath.Join(dir, "missing"), 0o755)
	if _, err := c.Acquire(3); err != nil {
		t.Errorf("the open that failed is not tried again: %v", err)
	}
	c.Release(3)
	c.mu.Lock()
	for id, e := range c.m {
		if id != 0 && e.refs != 0 {
			t.Errorf("directory %d holds %d references", id, e.refs)
		}
	}
	c.mu.Unlock()
}

// TestCopyDirectFallback: a source that cannot be mapped gives errNoDirect
// with the destination fd back without O_DIRECT, and the device pair is
// not tried again.
func TestCopyDirectFallback(t *testing.T) {
	var pfd [2]int
	if err := unix.Pipe(pfd[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd[0])
	defer unix.Close(pfd[1])
	dfd, err := unix.Open(filepath.Join(t.TempDir(), "d"), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	d := DataCopier{Caps: NewCaps()}
	if _, err := d.copyDirect(pfd[0], dfd, 1<<20, devPair{1, 2}); !errors.Is(err, errNoDirect) {
		t.Fatalf("copy from a pipe: %v, want errNoDirect", err)
	}
	fl, _ := unix.FcntlInt(uintptr(dfd), unix.F_GETFL, 0)
	if fl&unix.O_DIRECT != 0 {
		t.Error("the destination fd kept O_DIRECT")
	}
	if d.Caps.get(devPair{1, 2}).direct != capNo {
		t.Error("the device pair will try O_DIRECT again")
	}
}
