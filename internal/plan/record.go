// Package plan owns the on-disk structures between the scan and the copy:
// the entry records (one per non-directory path, sorted by (dev, ino) into
// the plan file, whose runs of equal (dev, ino) are the link groups) and the
// directory table (one record per directory, indexed by directory id).
//
// Records are encoded big-endian so that bytes.Compare orders them by their
// leading key, which is all the external sort knows.
package plan

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Entry is one non-directory path: the inode it names (dev, ino), its type
// from getdents, its directory and its name there.
type Entry struct {
	Dev, Ino uint64
	Dir      uint32
	Type     uint8
	Name     []byte
}

// EntryHeader is the fixed part of an encoded entry; the name follows.
const EntryHeader = 8 + 8 + 4 + 1

// AppendEntry encodes e after dst: dev, ino, dir, type, name. The sort order
// is therefore (dev, ino, dir, type, name).
func AppendEntry(dst []byte, dev, ino uint64, dir uint32, typ uint8, name []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, dev)
	dst = binary.BigEndian.AppendUint64(dst, ino)
	dst = binary.BigEndian.AppendUint32(dst, dir)
	dst = append(dst, typ)
	return append(dst, name...)
}

// DecodeEntry decodes rec; Name aliases rec.
func DecodeEntry(rec []byte) (Entry, error) {
	if len(rec) <= EntryHeader {
		return Entry{}, fmt.Errorf("plan: entry record of %d bytes", len(rec))
	}
	return Entry{
		Dev:  binary.BigEndian.Uint64(rec[0:]),
		Ino:  binary.BigEndian.Uint64(rec[8:]),
		Dir:  binary.BigEndian.Uint32(rec[16:]),
		Type: rec[20],
		Name: rec[EntryHeader:],
	}, nil
}

// SameInode reports whether two encoded entries name the same (dev, ino).
func SameInode(a, b []byte) bool {
	return len(a) >= 16 && len(b) >= 16 && string(a[:16]) == string(b[:16])
}

// Dir flags.
const (
	DirMountSkipped uint8 = 1 << iota // a mount point not descended (--one-file-system)
	DirUnreadable                     // could not be opened or read: contents unknown
	DirGone                           // vanished before it could be read: not to be created
	DirMountPoint                     // the root of another filesystem than its parent's (descended)
)

// Dir is one directory of the source tree with the metadata to restore.
type Dir struct {
	ID, Parent   uint32
	Dev, Ino     uint64
	Mode         uint32
	Uid, Gid     uint32
	Atime, Mtime unix.Timespec
	Flags        uint8
	Name         []byte // name in the parent; empty for the root
}

// DirHeader is the fixed part of an encoded directory record.
const DirHeader = 4 + 4 + 8 + 8 + 4 + 4 + 4 + 8 + 4 + 8 + 4 + 1

// SetStat fills the metadata fields from a stat.
func (d *Dir) SetStat(st *unix.Stat_t) {
	d.Dev, d.Ino = st.Dev, st.Ino
	d.Mode, d.Uid, d.Gid = st.Mode, st.Uid, st.Gid
	d.Atime, d.Mtime = st.Atim, st.Mtim
}

// AppendDir encodes d after dst, keyed by its id.
func AppendDir(dst []byte, d *Dir) []byte {
	dst = binary.BigEndian.AppendUint32(dst, d.ID)
	dst = binary.BigEndian.AppendUint32(dst, d.Parent)
	dst = binary.BigEndian.AppendUint64(dst, d.Dev)
	dst = binary.BigEndian.AppendUint64(dst, d.Ino)
	dst = binary.BigEndian.AppendUint32(dst, d.Mode)
	dst = binary.BigEndian.AppendUint32(dst, d.Uid)
	dst = binary.BigEndian.AppendUint32(dst, d.Gid)
	dst = binary.BigEndian.AppendUint64(dst, uint64(d.Atime.Sec))
	dst = binary.BigEndian.AppendUint32(dst, uint32(d.Atime.Nsec))
	dst = binary.BigEndian.AppendUint64(dst, uint64(d.Mtime.Sec))
	dst = binary.BigEndian.AppendUint32(dst, uint32(d.Mtime.Nsec))
	dst = append(dst, d.Flags)
	return append(dst, d.Name...)
}

// DecodeDir decodes rec into d; d.Name aliases rec.
func DecodeDir(rec []byte, d *Dir) error {
	if len(rec) < DirHeader {
		return fmt.Errorf("plan: directory record of %d bytes", len(rec))
	}
	be := binary.BigEndian
	d.ID = be.Uint32(rec[0:])
	d.Parent = be.Uint32(rec[4:])
	d.Dev = be.Uint64(rec[8:])
	d.Ino = be.Uint64(rec[16:])
	d.Mode = be.Uint32(rec[24:])
	d.Uid = be.Uint32(rec[28:])
	d.Gid = be.Uint32(rec[32:])
	d.Atime = unix.Timespec{Sec: int64(be.Uint64(rec[36:])), Nsec: int64(be.Uint32(rec[44:]))}
	d.Mtime = unix.Timespec{Sec: int64(be.Uint64(rec[48:])), Nsec: int64(be.Uint32(rec[56:]))}
	d.Flags = rec[60]
	d.Name = rec[DirHeader:]
	return nil
}
