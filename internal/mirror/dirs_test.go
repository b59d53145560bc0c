package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirsForget: forget drops a directory and what is below it, never
// the fds of its ancestors (a caller holds its parent's while it deletes
// or renames it), in a small cache and in a large one (which drops all the
// rest too).
func TestDirsForget(t *testing.T) {
	for _, n := range []int{10, 4200} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			root := t.TempDir()
			for _, p := range []string{"a/b/c", "a/x"} {
				if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < n; i++ {
				if err := os.Mkdir(filepath.Join(root, fmt.Sprintf("d%05d", i)), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(rfd)
			d := newDirs(rfd, 1<<20)
			defer d.close()
			for i := 0; i < n; i++ {
				if _, err := d.get(fmt.Sprintf("d%05d", i)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := d.get("a/b/c"); err != nil {
				t.Fatal(err)
			}
			if _, err := d.get("a/x"); err != nil {
				t.Fatal(err)
			}
			pfd, name, err := d.parent([]byte("a/b"))
			if err != nil || name != "b" {
				t.Fatal(name, err)
			}
			d.forget("a/b")
			// The parent's fd is still the parent: the caller goes on.
			var st unix.Stat_t
			if err := unix.Fstatat(pfd, "b", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatalf("the parent's fd after forget: %v", err)
			}
			for _, p := range []string{"a/b", "a/b/c"} {
				if _, ok := d.m[p]; ok {
					t.Errorf("%s is still cached", p)
				}
			}
			if _, ok := d.m["a"]; !ok {
				t.Error("the ancestor a was dropped")
			}
			_, kept := d.m["a/x"]
			if big := n > 4096; kept == big {
				t.Errorf("a/x cached: %v, with %d entries", kept, n)
			}
			if d.lru.Len() != len(d.m) {
				t.Errorf("lru %d entries, map %d", d.lru.Len(), len(d.m))
			}
			// A directory renamed over a forgotten path is found anew.
			if err := os.Rename(filepath.Join(root, "a/b"), filepath.Join(root, "a/old")); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(root, "a/b"), 0o700); err != nil {
				t.Fatal(err)
			}
			fd, err := d.get("a/b")
			if err != nil {
				t.Fatal(err)
			}
			if unix.Fstatat(fd, "c", &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				t.Error("a/b resolves to the renamed directory")
			}
		})
	}
}
