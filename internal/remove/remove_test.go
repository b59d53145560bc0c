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
			err := r.match(sfd, dfd, "x", &ss, &ds)
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
