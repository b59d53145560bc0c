// Package fsx owns the Linux file-system primitives the pipeline stages
// share: a directory used only through its fd (Dir), getdents parsing and
// file types, data copy (reflink, copy_file_range, holes, O_DIRECT from the
// mapped source, sendfile), a minimal io_uring for batches of linkat, xattr
// copy, and a bounded cache of directory fds reached without following
// symlinks. It knows nothing of plans, jobs or budgets.
package fsx

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// File types, as the DT_* values of getdents.
const (
	TypeUnknown = unix.DT_UNKNOWN
	TypeFifo    = unix.DT_FIFO
	TypeChr     = unix.DT_CHR
	TypeDir     = unix.DT_DIR
	TypeBlk     = unix.DT_BLK
	TypeReg     = unix.DT_REG
	TypeLnk     = unix.DT_LNK
	TypeSock    = unix.DT_SOCK
)

// TypeOfMode maps an st_mode to its DT_* type.
func TypeOfMode(mode uint32) uint8 {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return TypeReg
	case unix.S_IFDIR:
		return TypeDir
	case unix.S_IFLNK:
		return TypeLnk
	case unix.S_IFIFO:
		return TypeFifo
	case unix.S_IFSOCK:
		return TypeSock
	case unix.S_IFCHR:
		return TypeChr
	case unix.S_IFBLK:
		return TypeBlk
	}
	return TypeUnknown
}

// TypeName is a short human name of a DT_* type.
func TypeName(t uint8) string {
	switch t {
	case TypeReg:
		return "file"
	case TypeDir:
		return "dir"
	case TypeLnk:
		return "symlink"
	case TypeFifo:
		return "fifo"
	case TypeSock:
		return "socket"
	case TypeChr:
		return "chardev"
	case TypeBlk:
		return "blockdev"
	}
	return "unknown"
}

// ParseDirents walks the linux_dirent64 records in buf (as filled by
// getdents64) and calls fn for each entry other than "." and "..". The name
// slice aliases buf. dot, if not nil, is called with the d_ino of ".".
func ParseDirents(buf []byte, dot func(ino uint64), fn func(ino uint64, typ uint8, name []byte)) error {
	for len(buf) > 0 {
		if len(buf) < 19 {
			return fmt.Errorf("getdents: short record (%d bytes)", len(buf))
		}
		ino := binary.LittleEndian.Uint64(buf[0:8])
		reclen := int(binary.LittleEndian.Uint16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			return fmt.Errorf("getdents: bad record length %d", reclen)
		}
		typ := buf[18]
		name := buf[19:reclen]
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		buf = buf[reclen:]
		if len(name) == 1 && name[0] == '.' {
			if dot != nil {
				dot(ino)
			}
			continue
		}
		if len(name) == 2 && name[0] == '.' && name[1] == '.' {
			continue
		}
		if len(name) == 0 {
			continue
		}
		fn(ino, typ, name)
	}
	return nil
}
