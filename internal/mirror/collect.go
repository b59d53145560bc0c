package mirror

import (
	"encoding/binary"
	"strings"

	"hlcp/internal/differ"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// collector is the mirror's consumer of the differ: it sorts what the
// differences say into the files the passes read.
type collector struct {
	m      *Mirror
	groups *spool          // every source non-directory path (differ.Pair), by source inode
	flags  *extsort.Sorter // what is wrong with pairs, and occupied paths, by source inode
	// contested: (source inode, destination inode, paths) of every
	// destination inode that more than one source inode reaches; losers:
	// the claims that lost (resolveShared), by source inode.
	contested *extsort.Sorter
	losers    *extsort.Sorter
	extras    *spool // paths only DST has, in path order
	mkdirs    *spool // directories to make, in path order
	dirfix    *spool // directories whose metadata differs, in path order
	// decisions: per source inode that needs work, what to do; kept and
	// stale: the DST inodes kept, and those at paths to be relinked
	// (decide.go)
	decisions   *spool
	kept, stale *spool
	rec         []byte
	nExtras     int64
	// replaced: the last directory of DST where SRC has another type, with
	// a slash: the paths only DST has below it go with it when it is
	// replaced (it is renamed aside whole), and are marked so.
	replaced string
}

// underReplaced marks the type byte of a path only DST has below a
// directory that a path of another type replaces.
const underReplaced = 0x80

// pair takes a source path from the differ's pairs walk.
func (c *collector) pair(p differ.Pair) error {
	c.rec = appendGroup(c.rec[:0], p)
	return c.groups.add(c.rec)
}

// Path-record kinds.
const (
	kindMake    = 'm' // a directory to make
	kindReplace = 'r' // a directory to make where DST has another type
	kindFix     = 'f' // a directory whose metadata differs
)

// Difference takes one difference, in path order.
func (c *collector) Difference(d differ.Diff) error {
	path := []byte(d.Path)
	src, dst := inode{d.Src.Dev, d.Src.Ino}, inode{d.Dst.Dev, d.Dst.Ino}
	isDir := d.Src.Type == fsx.TypeDir
	switch d.Kind {
	case differ.Extra:
		c.nExtras++
		typ := d.Dst.Type
		if c.replaced != "" && strings.HasPrefix(d.Path, c.replaced) {
			typ |= underReplaced
		}
		return c.extras.add(appendPathRec(c.rec[:0], typ, path))
	case differ.Missing:
		if isDir {
			return c.mkdirs.add(appendPathRec(c.rec[:0], kindMake, path))
		}
		return nil // in the groups already
	case differ.Type:
		if d.Dst.Type == fsx.TypeDir {
			c.replaced = d.Path + "/"
		}
		if isDir {
			return c.mkdirs.add(appendPathRec(c.rec[:0], kindReplace, path))
		}
		c.rec = appendFlag(c.rec[:0], src, inode{absentNode.Dev, absentNode.Ino}, flagOccupied, path)
		return c.flags.Add(c.rec)
	case differ.Meta, differ.Content:
		if isDir {
			return c.dirfix.add(appendPathRec(c.rec[:0], kindFix, path))
		}
		c.rec = appendFlag(c.rec[:0], src, dst, c.m.flagOf(d.Code), nil)
		return c.flags.Add(c.rec)
	case differ.Error, differ.Changed:
		c.m.fail(d.Path, d.Detail)
	}
	return nil // Split: the groups show it; Joined: shared says more
}

// shared takes a destination inode that more than one source inode
// reaches (see differ.Options.Shared): each such source inode claims it,
// and one wins (resolveShared).
func (c *collector) shared(dst, src differ.Node, paths int64) error {
	c.rec = appendFlag(c.rec[:0], inode{src.Dev, src.Ino}, inode{dst.Dev, dst.Ino}, 0, nil)
	c.rec = binary.BigEndian.AppendUint64(c.rec, uint64(paths))
	return c.contested.Add(c.rec)
}

// flagOf classifies a pair's difference: what makes DST's inode no copy
// of the source's, or what can be fixed on it in place.
func (m *Mirror) flagOf(code string) uint8 {
	switch code {
	case differ.CodeMode, differ.CodeOwner, differ.CodeXattr, differ.CodeACL, differ.CodeAtime:
		return flagMeta
	case differ.CodeMtime:
		if m.o.Checksum {
			return flagMeta // the content was compared, and is the same
		}
	}
	return flagContent
}
