package demo

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Check compares two small trees in memory (for the demo only; hlcp verify
// is the bounded-memory tool): per path type, mode, owner, size, mtime,
// symlink text and content, and the partition of paths into inodes.
func Check(src, dst string) (paths, groups int, diffs []string, err error) {
	type info struct {
		st   syscall.Stat_t
		link string
	}
	load := func(root string) (map[string]info, error) {
		m := map[string]info{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			var i info
			if err := syscall.Lstat(p, &i.st); err != nil {
				return err
			}
			if d.Type()&fs.ModeSymlink != 0 {
				i.link, _ = os.Readlink(p)
			}
			m[rel] = i
			return nil
		})
		return m, err
	}
	a, err := load(src)
	if err != nil {
		return 0, 0, nil, err
	}
	b, err := load(dst)
	if err != nil {
		return 0, 0, nil, err
	}
	firstA, firstB := map[[2]uint64]string{}, map[[2]uint64]string{}
	for rel, x := range a {
		paths++
		y, ok := b[rel]
		if !ok {
			diffs = append(diffs, "missing in copy: "+rel)
			continue
		}
		if x.st.Mode != y.st.Mode || x.st.Uid != y.st.Uid || x.st.Gid != y.st.Gid || x.link != y.link {
			diffs = append(diffs, fmt.Sprintf("metadata differs: %s", rel))
		}
		if x.st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			if x.st.Size != y.st.Size || x.st.Mtim != y.st.Mtim {
				diffs = append(diffs, "size or mtime differs: "+rel)
			}
			ka, kb := [2]uint64{x.st.Dev, x.st.Ino}, [2]uint64{y.st.Dev, y.st.Ino}
			fa, seenA := firstA[ka]
			fb, seenB := firstB[kb]
			if !seenA {
				firstA[ka] = rel
				groups++
			}
			if !seenB {
				firstB[kb] = rel
			}
			if seenA != seenB || (seenA && fa != fb) {
				diffs = append(diffs, "hard-link structure differs at: "+rel)
			}
			if x.st.Mode&syscall.S_IFMT == syscall.S_IFREG && !seenA {
				ca, _ := os.ReadFile(filepath.Join(src, rel))
				cb, _ := os.ReadFile(filepath.Join(dst, rel))
				if !bytes.Equal(ca, cb) {
					diffs = append(diffs, "content differs: "+rel)
				}
			}
		} else if rel != "." && x.st.Mtim != y.st.Mtim {
			diffs = append(diffs, "directory mtime differs: "+rel)
		}
	}
	for rel := range b {
		if _, ok := a[rel]; !ok {
			diffs = append(diffs, "extra in copy: "+rel)
		}
	}
	return paths, groups, diffs, nil
}
