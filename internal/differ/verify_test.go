package differ

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
)

func TestCompareMeta(t *testing.T) {
	base := Inode{St: unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 1, Gid: 2, Size: 10, Mtim: unix.Timespec{Sec: 5, Nsec: 6}}}
	cases := []struct {
		name  string
		mut   func(*Inode)
		what  What
		codes []string
	}{
		{"identical", func(*Inode) {}, All, nil},
		{"mode", func(i *Inode) { i.St.Mode = unix.S_IFREG | 0o600 }, All, []string{CodeMode}},
		{"mode ignored", func(i *Inode) { i.St.Mode = unix.S_IFREG | 0o600 }, What{Owner: true, Times: true}, nil},
		{"setuid", func(i *Inode) { i.St.Mode |= unix.S_ISUID }, All, []string{CodeMode}},
		{"owner", func(i *Inode) { i.St.Gid = 3 }, All, []string{CodeOwner}},
		{"size", func(i *Inode) { i.St.Size = 11 }, All, []string{CodeSize}},
		{"mtime 1ns", func(i *Inode) { i.St.Mtim.Nsec++ }, All, []string{CodeMtime}},
		{"mtime ignored", func(i *Inode) { i.St.Mtim.Nsec++ }, What{Perms: true}, nil},
		{"atime only when asked", func(i *Inode) { i.St.Atim.Sec = 9 }, All, nil},
		{"atime asked", func(i *Inode) { i.St.Atim.Sec = 9 }, What{Atime: true}, []string{CodeAtime}},
		{"type", func(i *Inode) { i.St.Mode = unix.S_IFLNK | 0o777 }, All, []string{CodeType}},
		{"xattr added", func(i *Inode) { i.Xattrs = []fsx.Xattr{{Name: "user.a", Value: []byte("x")}} }, All, []string{CodeXattr}},
		{"acl added", func(i *Inode) { i.Xattrs = []fsx.Xattr{{Name: "system.posix_acl_access", Value: []byte{2}}} }, All, []string{CodeACL}},
		{"acl ignored", func(i *Inode) { i.Xattrs = []fsx.Xattr{{Name: "system.posix_acl_access", Value: []byte{2}}} }, What{Xattrs: true}, nil},
		{"content", func(i *Inode) { i.Sum = []byte{9} }, All, []string{CodeContent}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := base, base
			a.Sum, b.Sum = []byte{1}, []byte{1}
			c.mut(&b)
			var got []string
			for _, d := range CompareMeta(&a, &b, c.what) {
				got = append(got, d.Code)
			}
			if len(got) != len(c.codes) {
				t.Fatalf("codes %v, want %v", got, c.codes)
			}
			for i := range got {
				if got[i] != c.codes[i] {
					t.Errorf("codes %v, want %v", got, c.codes)
				}
			}
		})
	}
	// Devices compare their numbers, symlinks their text.
	dev := Inode{St: unix.Stat_t{Mode: unix.S_IFCHR | 0o600, Rdev: unix.Mkdev(1, 3)}}
	dev2 := dev
	dev2.St.Rdev = unix.Mkdev(1, 5)
	if d := CompareMeta(&dev, &dev2, All); len(d) != 1 || d[0].Code != CodeRdev {
		t.Errorf("rdev: %v", d)
	}
	l1 := Inode{St: unix.Stat_t{Mode: unix.S_IFLNK | 0o777, Size: 3}, Target: []byte("abc")}
	l2 := l1
	l2.Target = []byte("abd")
	// A symlink's atime: compared with Atime, not with NoSymlinkAtime
	// too (sync's); a regular file's still is.
	l3 := l1
	l3.St.Atim.Sec = 9
	if d := CompareMeta(&l1, &l3, What{Atime: true}); len(d) != 1 || d[0].Code != CodeAtime {
		t.Errorf("symlink atime: %v", d)
	}
	if d := CompareMeta(&l1, &l3, What{Atime: true, NoSymlinkAtime: true}); len(d) != 0 {
		t.Errorf("symlink atime with NoSymlinkAtime: %v", d)
	}
	f3 := base
	f3.St.Atim.Sec = 9
	if d := CompareMeta(&base, &f3, What{Atime: true, NoSymlinkAtime: true}); len(d) != 1 || d[0].Code != CodeAtime {
		t.Errorf("file atime with NoSymlinkAtime: %v", d)
	}
	if d := CompareMeta(&l1, &l2, All); len(d) != 1 || d[0].Code != CodeTarget {
		t.Errorf("target: %v", d)
	}
}

// TestKeyOrder: the NUL terminator makes the order a function of the path
// alone, whatever follows it in the record.
func TestKeyOrder(t *testing.T) {
	paths := []string{"a", "a/b", "a-b", "a/b/c", "ab", "a\xff", "b", ""}
	var recs [][]byte
	for i, p := range paths {
		recs = append(recs, appendPath(nil, []byte(p), kindEntry, 8, uint64(255-i), uint64(i*7919), uint32(i)))
	}
	sort.Slice(recs, func(i, j int) bool { return bytes.Compare(recs[i], recs[j]) < 0 })
	sorted := append([]string(nil), paths...)
	sort.Slice(sorted, func(i, j int) bool {
		return bytes.Compare(append([]byte(sorted[i]), 0), append([]byte(sorted[j]), 0)) < 0
	})
	for i, r := range recs {
		p, err := decodePath(r)
		if err != nil {
			t.Fatal(err)
		}
		if keyPath(p.key) != sorted[i] {
			t.Fatalf("order %d: %q want %q", i, keyPath(p.key), sorted[i])
		}
	}
	if keyName([]byte("x/y/zz\x00")) != "zz" || keyName([]byte("top\x00")) != "top" {
		t.Error("keyName")
	}
}

// TestHasherSparse: a sparse file and a dense file with the same bytes hash
// the same; one flipped byte hashes differently.
func TestHasherSparse(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 8192)
	rand.Read(data)
	sparse := filepath.Join(dir, "sparse")
	f, _ := os.Create(sparse)
	f.WriteAt(data, 3<<20)
	f.Truncate(8 << 20)
	f.Close()
	full := make([]byte, 8<<20)
	copy(full[3<<20:], data)
	dense := filepath.Join(dir, "dense")
	os.WriteFile(dense, full, 0o644)
	full[5<<20] = 1
	other := filepath.Join(dir, "other")
	os.WriteFile(other, full, 0o644)
	for _, kind := range []string{"fast", "sha256"} {
		h, err := NewHasher(kind)
		if err != nil {
			t.Fatal(err)
		}
		sum := func(p string, sp bool) []byte {
			fd, _ := unix.Open(p, unix.O_RDONLY, 0)
			defer unix.Close(fd)
			s, _, err := h.Sum(fd, 8<<20, sp)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		a, b, c := sum(sparse, true), sum(dense, false), sum(other, true)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: sparse and dense copies of the same bytes differ", kind)
		}
		if bytes.Equal(b, c) {
			t.Errorf("%s: a changed byte was not seen", kind)
		}
		if h2 := h.Clone(); !bytes.Equal(func() []byte {
			fd, _ := unix.Open(dense, unix.O_RDONLY, 0)
			defer unix.Close(fd)
			s, _, _ := h2.Sum(fd, 8<<20, false)
			return s
		}(), b) {
			t.Errorf("%s: a clone hashes differently", kind)
		}
	}
	if _, err := NewHasher("md5"); err == nil {
		t.Error("unknown hash accepted")
	}
}

// FuzzPathRecord: a path record decodes to what was encoded, whatever the
// name bytes (no NUL: names cannot hold one), two records order as their
// paths do, and arbitrary bytes never make the decoder panic.
func FuzzPathRecord(f *testing.F) {
	f.Add([]byte("a/b"), []byte("a-b"), uint64(1), uint64(2))
	f.Add([]byte("caf\xe9/new\nline"), []byte(""), uint64(1<<63), uint64(0))
	f.Fuzz(func(t *testing.T, p, q []byte, dev, ino uint64) {
		decodePath(p) // must not panic
		if bytes.IndexByte(p, 0) >= 0 || bytes.IndexByte(q, 0) >= 0 {
			return
		}
		rp := appendPath(nil, p, kindEntry, 8, dev, ino, 7)
		rq := appendPath(nil, q, kindDir, 4, ino, dev, 9)
		d, err := decodePath(rp)
		if err != nil || !bytes.Equal(d.key[:len(d.key)-1], p) || d.dev != dev || d.ino != ino || d.dir != 7 || d.kind != kindEntry || d.typ != 8 {
			t.Fatalf("round trip of %q: %+v, %v", p, d, err)
		}
		byPath := bytes.Compare(append(p, 0), append(q, 0))
		if byRec := bytes.Compare(rp, rq); byPath != 0 && byRec != byPath {
			t.Fatalf("records of %q and %q order %d, paths %d", p, q, byRec, byPath)
		}
	})
}
