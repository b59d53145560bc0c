package remove

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMatch: what counts as "DST still has a copy of this source inode".
func TestMatch(t *testing.T) {
	mt := unix.Timespec{Sec: 1600000000, Nsec: 123456789}
	type side struct {
		kind    string // file, symlink, fifo, dir
		content string
		mtime   unix.Timespec
	}
	file := func(c string) side { return side{"file", c, mt} }
	cases := []struct {
		name     string
		src, dst side
		checksum bool
		slack    int64
		want     string // "" = match, else a substring of the error
	}{
		{"same file", file("hello"), file("hello"), false, 0, ""},
		{"same file, checksum", file("hello"), file("hello"), true, 0, ""},
		{"empty files", file(""), file(""), true, 0, ""},
		{"size differs", file("hello"), file("hello!"), false, 0, "size 6, not 5"},
		{"mtime differs by 1ns", file("hello"), side{"file", "hello", unix.Timespec{Sec: mt.Sec, Nsec: mt.Nsec + 1}}, false, 0, "mtime"},
		{"mtime within fat slack", file("hello"), side{"file", "hello", unix.Timespec{Sec: mt.Sec + 1}}, false, 2e9, ""},
		{"mtime beyond fat slack", file("hello"), side{"file", "hello", unix.Timespec{Sec: mt.Sec + 3}}, false, 2e9, "mtime"},
		{"content differs, no checksum", file("hello"), file("HELLO"), false, 0, ""},
		{"content differs, checksum", file("hello"), file("HELLO"), true, 0, "content"},
		{"large content differs at the end", file(strings.Repeat("a", 3<<20) + "x"), file(strings.Repeat("a", 3<<20) + "y"), true, 0, "content (near byte 3145728)"},
		{"file vs symlink", file("t"), side{"symlink", "t", mt}, false, 0, "type"},
		{"same symlink", side{"symlink", "target", mt}, side{"symlink", "target", mt}, false, 0, ""},
		{"symlink target differs", side{"symlink", "target1", mt}, side{"symlink", "target2", mt}, false, 0, "symlink target"},
		{"same fifo", side{"fifo", "", mt}, side{"fifo", "", mt}, false, 0, ""},
		{"fifo vs file", side{"fifo", "", mt}, file(""), false, 0, "type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			make := func(dir string, s side) int {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(dir, "x")
				var err error
				switch s.kind {
				case "file":
					err = os.WriteFile(p, []byte(s.content), 0o644)
				case "symlink":
					err = os.Symlink(s.content, p)
				case "fifo":
					err = unix.Mkfifo(p, 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
				if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{s.mtime, s.mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					t.Fatal(err)
				}
				fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { unix.Close(fd) })
				return fd
			}
			sfd, dfd := make(filepath.Join(base, "s"), c.src), make(filepath.Join(base, "d"), c.dst)
			var ss, ds unix.Stat_t
			if err := unix.Fstatat(sfd, "x", &ss, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fstatat(dfd, "x", &ds, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			r := &Remover{opt: Options{Checksum: c.checksum}, timeSlack: c.slack}
			err := r.match(sfd, dfd, "x", "x", &ss, &ds, c.checksum)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("want a match, got %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("want an error with %q, got %v", c.want, err)
			}
		})
	}
}

func TestCoarseClock(t *testing.T) {
	for _, c := range []struct {
		fs   int64
		want bool
	}{{0x4d44, true}, {0x2011BAB0, true}, {0xEF53, false}, {0x58465342, false}} {
		if got := coarseClock(c.fs); got != c.want {
			t.Errorf("coarseClock(%#x) = %v", c.fs, got)
		}
	}
}

// TestMatchMeta: mode and owner are compared where the destination keeps
// them, every source xattr must be in DST with its value, and full
// compares the content.
func TestMatchMeta(t *testing.T) {
	root := os.Geteuid() == 0
	type meta struct {
		mode     uint32
		uid, gid int
		xattrs   map[string]string
		content  string
	}
	base := meta{mode: 0o644, content: "hello"}
	with := func(f func(m *meta)) meta {
		m := base
		m.xattrs = map[string]string{}
		f(&m)
		return m
	}
	cases := []struct {
		name               string
		src, dst           meta
		keepsModes, owners bool
		full, rootOnly     bool
		want               string
	}{
		{name: "same", src: base, dst: base, keepsModes: true, owners: true, full: true},
		{name: "mode differs", src: base, dst: with(func(m *meta) { m.mode = 0o600 }), keepsModes: true, want: "mode 0600, not 0644"},
		{name: "mode differs, not kept by DST", src: base, dst: with(func(m *meta) { m.mode = 0o600 })},
		{name: "setuid bit differs", src: with(func(m *meta) { m.mode = 0o4755 }), dst: with(func(m *meta) { m.mode = 0o755 }), keepsModes: true, want: "mode"},
		{name: "owner differs", src: with(func(m *meta) { m.uid, m.gid = 1234, 1234 }), dst: base, owners: true, rootOnly: true, want: "owner 0:0, not 1234:1234"},
		{name: "group differs", src: with(func(m *meta) { m.gid = 77 }), dst: base, owners: true, rootOnly: true, want: "owner"},
		{name: "owner differs, not kept", src: with(func(m *meta) { m.uid = 1234 }), dst: base, rootOnly: true},
		{name: "xattr missing in DST", src: with(func(m *meta) { m.xattrs["user.a"] = "1" }), dst: base, want: "lacks the xattr user.a"},
		{name: "xattr value differs", src: with(func(m *meta) { m.xattrs["user.a"] = "1" }), dst: with(func(m *meta) { m.xattrs["user.a"] = "2" }), want: "xattr user.a"},
		{name: "one of several xattrs missing", src: with(func(m *meta) { m.xattrs["user.a"], m.xattrs["user.b"], m.xattrs["user.c"] = "1", "2", "3" }),
			dst: with(func(m *meta) { m.xattrs["user.a"], m.xattrs["user.c"] = "1", "3" }), want: "lacks the xattr user.b"},
		{name: "xattrs equal", src: with(func(m *meta) { m.xattrs["user.a"], m.xattrs["user.b"] = "1", "2" }),
			dst: with(func(m *meta) { m.xattrs["user.a"], m.xattrs["user.b"] = "1", "2" })},
		{name: "more xattrs in DST", src: with(func(m *meta) { m.xattrs["user.b"] = "2" }),
			dst: with(func(m *meta) { m.xattrs["user.a"], m.xattrs["user.b"], m.xattrs["user.z"] = "1", "2", "3" }), want: "it has the xattr user.a"},
		{name: "content differs, full", src: base, dst: with(func(m *meta) { m.content = "HELLO" }), full: true, want: "content"},
		{name: "content differs, not full", src: base, dst: with(func(m *meta) { m.content = "HELLO" })},
	}
	mt := unix.Timespec{Sec: 1600000000, Nsec: 5}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.rootOnly && !root {
				t.Skip("needs root")
			}
			dir := t.TempDir()
			make := func(name string, m meta) int {
				d := filepath.Join(dir, name)
				os.Mkdir(d, 0o755)
				p := filepath.Join(d, "x")
				if err := os.WriteFile(p, []byte(m.content), 0o600); err != nil {
					t.Fatal(err)
				}
				for k, v := range m.xattrs {
					if err := unix.Setxattr(p, k, []byte(v), 0); err != nil {
						t.Fatal(err)
					}
				}
				if root {
					if err := os.Lchown(p, m.uid, m.gid); err != nil {
						t.Fatal(err)
					}
				}
				if err := unix.Chmod(p, m.mode); err != nil {
					t.Fatal(err)
				}
				if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{mt, mt}, 0); err != nil {
					t.Fatal(err)
				}
				fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { unix.Close(fd) })
				return fd
			}
			sfd, dfd := make("s", c.src), make("d", c.dst)
			var ss, ds unix.Stat_t
			unix.Fstatat(sfd, "x", &ss, unix.AT_SYMLINK_NOFOLLOW)
			unix.Fstatat(dfd, "x", &ds, unix.AT_SYMLINK_NOFOLLOW)
			r := &Remover{keepsModes: c.keepsModes, keepsOwners: c.owners}
			err := r.match(sfd, dfd, "x", "x", &ss, &ds, c.full)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("want a match, got %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("want an error with %q, got %v", c.want, err)
			}
		})
	}
}
