package plan

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
)

// CopiedFile holds, for a move, one record per group of the plan (by its
// index in plan order): the source inode's ctime when its copy was made,
// and whether that copy is complete. A move removes a source path only
// when its inode has not changed since (same ctime), or when a full
// comparison with the copy finds them equal.
const CopiedFile = "copied"

// CopiedRecord is the size of a record: ctime seconds (8 bytes), ctime
// nanoseconds with the flags in the top two bits (4), and a CRC-32C of
// the group's index and those 12 bytes (4), so that a record is never
// taken for another group's, and a record never written (zeros) reads as
// no record.
const CopiedRecord = 16

// Flags of a Copied record.
const (
	// CopiedChanged: the source changed while it was copied; the copy
	// may match no single state of it.
	CopiedChanged uint8 = 1 << iota
	// CopiedMetaIncomplete: some of its metadata (an xattr or ACL, an
	// owner, a mode, times) could not be set on the copy.
	CopiedMetaIncomplete
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Copied is the open CopiedFile. Put and Get may be called concurrently
// for different groups.
type Copied struct {
	f      *os.File
	groups int64
}

// CreateCopied makes a new CopiedFile in dir for groups groups (a file of
// holes, which read as no record), replacing one that a crash left before
// the journal recorded it.
func CreateCopied(dir *fsx.Dir, groups int64) (*Copied, blockfile.Info, error) {
	f, err := dir.CreateReplacing(CopiedFile)
	if err != nil {
		return nil, blockfile.Info{}, err
	}
	if err := f.Truncate(groups * CopiedRecord); err != nil {
		f.Close()
		return nil, blockfile.Info{}, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, blockfile.Info{}, err
	}
	return &Copied{f: f, groups: groups}, blockfile.Info{Size: groups * CopiedRecord, Records: groups}, nil
}

// OpenCopied opens the CopiedFile in dir that was created as info says.
func OpenCopied(dir *fsx.Dir, info blockfile.Info) (*Copied, error) {
	f, err := dir.OpenRW(CopiedFile)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && (fi.Size() != info.Size || info.Size != info.Records*CopiedRecord) {
		err = &blockfile.DamageError{File: f.Name(), Offset: fi.Size(), Why: fmt.Sprintf("%d bytes, not the %d written", fi.Size(), info.Size)}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Copied{f: f, groups: info.Records}, nil
}

// AppendCopied encodes the record of group g after dst.
func AppendCopied(dst []byte, g int64, ctime unix.Timespec, flags uint8) []byte {
	start := len(dst)
	dst = binary.BigEndian.AppendUint64(dst, uint64(ctime.Sec))
	dst = binary.BigEndian.AppendUint32(dst, uint32(ctime.Nsec)|uint32(flags)<<30)
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], uint64(g))
	sum := crc32.Update(crc32.Checksum(idx[:], crcTable), crcTable, dst[start:])
	return binary.BigEndian.AppendUint32(dst, sum)
}

// PutRange writes the records recs (encoded by AppendCopied) of the groups
// from first on.
func (c *Copied) PutRange(first int64, recs []byte) error {
	if first < 0 || first+int64(len(recs)/CopiedRecord) > c.groups || len(recs)%CopiedRecord != 0 {
		return fmt.Errorf("copied records %d..+%d out of range (%d groups)", first, len(recs)/CopiedRecord, c.groups)
	}
	if _, err := c.f.WriteAt(recs, first*CopiedRecord); err != nil {
		return fmt.Errorf("record copies: %w", err)
	}
	return nil
}

// Get reads the record of group g: ok is false when none was written.
func (c *Copied) Get(g int64) (ctime unix.Timespec, flags uint8, ok bool, err error) {
	if g < 0 || g >= c.groups {
		return ctime, 0, false, fmt.Errorf("copied record %d out of range (%d groups)", g, c.groups)
	}
	var b [CopiedRecord]byte
	if _, err := c.f.ReadAt(b[:], g*CopiedRecord); err != nil {
		return ctime, 0, false, fmt.Errorf("read %s: %w", c.f.Name(), err)
	}
	if b == [CopiedRecord]byte{} {
		return ctime, 0, false, nil
	}
	sec := int64(binary.BigEndian.Uint64(b[:]))
	v := binary.BigEndian.Uint32(b[8:])
	ctime = unix.Timespec{Sec: sec, Nsec: int64(v & (1<<30 - 1))}
	flags = uint8(v >> 30)
	if want := AppendCopied(nil, g, ctime, flags); string(want) != string(b[:]) {
		return unix.Timespec{}, 0, false, &blockfile.DamageError{File: c.f.Name(), Offset: g * CopiedRecord, Why: fmt.Sprintf("record of group %d fails its checksum", g)}
	}
	return ctime, flags, true, nil
}

// Sync makes the records written so far durable.
func (c *Copied) Sync() error { return c.f.Sync() }

// Close closes the file.
func (c *Copied) Close() error { return c.f.Close() }
