package differ

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/maphash"
	"io"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
)

// Difference codes, one per kind, as printed in the first column.
const (
	CodeMissing = "missing" // only in SRC
	CodeExtra   = "extra"   // only in DST
	CodeType    = "type"
	CodeMode    = "mode"
	CodeOwner   = "owner"
	CodeSize    = "size"
	CodeMtime   = "mtime"
	CodeAtime   = "atime"
	CodeTarget  = "target" // symlink text
	CodeRdev    = "rdev"
	CodeXattr   = "xattr"
	CodeACL     = "acl"
	CodeContent = "content"
	CodeSplit   = "split"   // shares an inode in SRC, not in DST
	CodeJoined  = "joined"  // shares an inode in DST, not in SRC
	CodeChanged = "changed" // changed while being verified
	CodeError   = "error"   // could not be checked
)

// What selects what is compared, like rsync's -a subsets.
type What struct {
	Perms, Owner, Times, Atime, Xattrs, ACLs bool
	// NoSymlinkAtime leaves symlinks out of Atime: readlink(2) moves a
	// symlink's atime (the differ's own included), so a mirror that
	// chased it would never be done.
	NoSymlinkAtime bool
}

// All compares everything hlcp copies except atimes.
var All = What{Perms: true, Owner: true, Times: true, Xattrs: true, ACLs: true}

// Inode is what is compared of one side of an inode pair.
type Inode struct {
	St     unix.Stat_t
	Target []byte
	Xattrs []fsx.Xattr
	// NoXattrs: the xattrs could not be read (the error is reported);
	// they are not compared.
	NoXattrs bool
	Sum      []byte // content hash, when asked
}

func ts(t unix.Timespec) string { return fmt.Sprintf("%d.%09d", t.Sec, t.Nsec) }

func isACL(name string) bool {
	return name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

// CompareMeta compares two stats (and symlink texts, xattrs and content
// sums when present) and returns the differences, with path empty.
func CompareMeta(a, b *Inode, w What) []Diff {
	var d []Diff
	add := func(code, format string, args ...any) {
		d = append(d, Diff{Code: code, Detail: fmt.Sprintf(format, args...)})
	}
	ta, tb := a.St.Mode&unix.S_IFMT, b.St.Mode&unix.S_IFMT
	if ta != tb {
		add(CodeType, "%s -> %s", fsx.TypeName(fsx.TypeOfMode(a.St.Mode)), fsx.TypeName(fsx.TypeOfMode(b.St.Mode)))
		return d
	}
	if w.Perms && ta != unix.S_IFLNK && a.St.Mode&07777 != b.St.Mode&07777 {
		add(CodeMode, "%04o -> %04o", a.St.Mode&07777, b.St.Mode&07777)
	}
	if w.Owner && (a.St.Uid != b.St.Uid || a.St.Gid != b.St.Gid) {
		add(CodeOwner, "%d:%d -> %d:%d", a.St.Uid, a.St.Gid, b.St.Uid, b.St.Gid)
	}
	if (ta == unix.S_IFREG || ta == unix.S_IFLNK) && a.St.Size != b.St.Size {
		add(CodeSize, "%d -> %d", a.St.Size, b.St.Size)
	}
	if (ta == unix.S_IFCHR || ta == unix.S_IFBLK) && a.St.Rdev != b.St.Rdev {
		add(CodeRdev, "%d:%d -> %d:%d", unix.Major(a.St.Rdev), unix.Minor(a.St.Rdev), unix.Major(b.St.Rdev), unix.Minor(b.St.Rdev))
	}
	if w.Times && a.St.Mtim != b.St.Mtim {
		add(CodeMtime, "%s -> %s", ts(a.St.Mtim), ts(b.St.Mtim))
	}
	if w.Atime && ta != unix.S_IFDIR && !(w.NoSymlinkAtime && ta == unix.S_IFLNK) && a.St.Atim != b.St.Atim {
		add(CodeAtime, "%s -> %s", ts(a.St.Atim), ts(b.St.Atim))
	}
	if ta == unix.S_IFLNK && !bytes.Equal(a.Target, b.Target) {
		add(CodeTarget, "%q -> %q", a.Target, b.Target)
	}
	if (w.Xattrs || w.ACLs) && !a.NoXattrs && !b.NoXattrs {
		i, j := 0, 0
		for i < len(a.Xattrs) || j < len(b.Xattrs) {
			var name string
			var code, what string
			switch {
			case j >= len(b.Xattrs) || i < len(a.Xattrs) && a.Xattrs[i].Name < b.Xattrs[j].Name:
				name, what = a.Xattrs[i].Name, "only in SRC"
				i++
			case i >= len(a.Xattrs) || b.Xattrs[j].Name < a.Xattrs[i].Name:
				name, what = b.Xattrs[j].Name, "only in DST"
				j++
			default:
				name = a.Xattrs[i].Name
				if !bytes.Equal(a.Xattrs[i].Value, b.Xattrs[j].Value) {
					what = "differs"
				}
				i++
				j++
			}
			if what == "" {
				continue
			}
			code = CodeXattr
			if isACL(name) {
				code = CodeACL
				if !w.ACLs {
					continue
				}
			} else if !w.Xattrs {
				continue
			}
			add(code, "%s %s", name, what)
		}
	}
	if a.Sum != nil && b.Sum != nil && !bytes.Equal(a.Sum, b.Sum) && a.St.Size == b.St.Size {
		add(CodeContent, "same size, different data")
	}
	return d
}

// Hasher hashes file contents: "fast" (maphash, seeded per run: only
// comparable within one process) or "sha256".
type Hasher struct {
	kind string
	seed maphash.Seed
	buf  []byte
	zero []byte
}

// NewHasher returns a hasher of the given kind.
func NewHasher(kind string) (*Hasher, error) {
	switch kind {
	case "", "fast":
		kind = "fast"
	case "sha256":
	default:
		return nil, fmt.Errorf("unknown hash %q (fast or sha256)", kind)
	}
	return &Hasher{kind: kind, seed: maphash.MakeSeed()}, nil
}

// Clone returns a hasher of the same kind and seed, for another worker.
func (h *Hasher) Clone() *Hasher { return &Hasher{kind: h.kind, seed: h.seed} }

func (h *Hasher) new() hash.Hash {
	if h.kind == "sha256" {
		return sha256.New()
	}
	var m maphash.Hash
	m.SetSeed(h.seed)
	return &m
}

// Sum hashes size bytes of fd. Holes of a sparse file are hashed as the
// zeros they read as, without reading them.
func (h *Hasher) Sum(fd int, size int64, sparse bool) ([]byte, int64, error) {
	if h.buf == nil {
		h.buf = make([]byte, 1<<20)
		h.zero = make([]byte, 1<<20)
	}
	s := h.new()
	var read int64
	data := func(off, end int64) error {
		for off < end {
			n := int64(len(h.buf))
			if end-off < n {
				n = end - off
			}
			k, err := unix.Pread(fd, h.buf[:n], off)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return err
			}
			if k == 0 {
				return io.ErrUnexpectedEOF
			}
			s.Write(h.buf[:k])
			off += int64(k)
			read += int64(k)
		}
		return nil
	}
	zeros := func(n int64) {
		for n > 0 {
			k := min(n, int64(len(h.zero)))
			s.Write(h.zero[:k])
			n -= k
		}
	}
	unix.Fadvise(fd, 0, 0, unix.FADV_SEQUENTIAL)
	if !sparse {
		if err := data(0, size); err != nil {
			return nil, read, err
		}
		return s.Sum(nil), read, nil
	}
	pos := int64(0)
	for pos < size {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break
			}
			// No SEEK_DATA: read everything.
			if err := data(pos, size); err != nil {
				return nil, read, err
			}
			pos = size
			break
		}
		if d > size {
			d = size
		}
		zeros(d - pos)
		e, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil || e > size {
			e = size
		}
		if err := data(d, e); err != nil {
			return nil, read, err
		}
		pos = e
	}
	zeros(size - pos)
	return s.Sum(nil), read, nil
}
