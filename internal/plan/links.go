package plan

import (
	"encoding/binary"
	"fmt"
)

// Link is one path of a link group after the group's first: a hard link to
// make in the destination. The copy creates each inode at its group's first
// path in inode order; the links are then made in the order of the link
// file, which is sorted by the directory they go into, so that a directory
// is visited once, by one worker, with the directories it links from (the
// same place in another snapshot) at hand.
type Link struct {
	// Chunk is the group's index in the plan divided by ChunkGroups: the
	// link file is sorted by chunk first, so the links of a chunk can be
	// made as soon as the copy has created the chunk's inodes, while it
	// goes on with the next ones.
	Chunk uint32
	Dir   uint32 // where the link goes: directory id and name
	Name  []byte
	// The group's first path, which the copy created: what to link to.
	// It names the source path too (same relative path), for the copies
	// that replace a link when the inode is full (EMLINK) or the
	// destination has no hard links.
	TDir  uint32
	TName []byte
	Dev   uint64 // the source inode (scan time)
	Ino   uint64
	Type  uint8
}

// ChunkGroups is the number of groups of a chunk (see Link.Chunk).
const ChunkGroups = 65536

// LinkHeader is the fixed part of an encoded link; the target name's length
// (uvarint), the target name and the name follow.
const LinkHeader = 4 + 4 + 4 + 8 + 8 + 1

// AppendLink encodes l after dst: chunk, dir, target dir, dev, ino, type,
// target name (length first), name. The sort order is therefore by chunk,
// then by directory, then by the directory linked from, then by inode.
func AppendLink(dst []byte, l *Link) []byte {
	dst = binary.BigEndian.AppendUint32(dst, l.Chunk)
	dst = binary.BigEndian.AppendUint32(dst, l.Dir)
	dst = binary.BigEndian.AppendUint32(dst, l.TDir)
	dst = binary.BigEndian.AppendUint64(dst, l.Dev)
	dst = binary.BigEndian.AppendUint64(dst, l.Ino)
	dst = append(dst, l.Type)
	dst = binary.AppendUvarint(dst, uint64(len(l.TName)))
	dst = append(dst, l.TName...)
	return append(dst, l.Name...)
}

// DecodeLink decodes rec into l; the names alias rec.
func DecodeLink(rec []byte, l *Link) error {
	if len(rec) <= LinkHeader {
		return fmt.Errorf("plan: link record of %d bytes", len(rec))
	}
	be := binary.BigEndian
	l.Chunk = be.Uint32(rec[0:])
	l.Dir = be.Uint32(rec[4:])
	l.TDir = be.Uint32(rec[8:])
	l.Dev = be.Uint64(rec[12:])
	l.Ino = be.Uint64(rec[20:])
	l.Type = rec[28]
	n, k := binary.Uvarint(rec[LinkHeader:])
	rest := rec[LinkHeader:]
	if k <= 0 || n == 0 || uint64(len(rest)-k) <= n {
		return fmt.Errorf("plan: bad link record (target name length %d of %d bytes)", n, len(rest))
	}
	l.TName = rest[k : k+int(n)]
	l.Name = rest[k+int(n):]
	return nil
}

// LinkKey is the chunk and the destination directory of an encoded link
// record.
func LinkKey(rec []byte) (chunk, dir uint32) {
	if len(rec) < 8 {
		return 0, 0
	}
	return binary.BigEndian.Uint32(rec), binary.BigEndian.Uint32(rec[4:])
}

// Target is the group's first path as a source entry.
func (l *Link) Target() Entry {
	return Entry{Dev: l.Dev, Ino: l.Ino, Dir: l.TDir, Type: l.Type, Name: l.TName}
}

// Entry is the link's own path as a source entry.
func (l *Link) Entry() Entry {
	return Entry{Dev: l.Dev, Ino: l.Ino, Dir: l.Dir, Type: l.Type, Name: l.Name}
}
