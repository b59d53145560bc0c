package testutil

import (
	"encoding/binary"
	"sort"
)

// POSIX ACL tags as used in the Linux posix_acl_xattr format.
const (
	ACLUserObj  = 0x01
	ACLUser     = 0x02
	ACLGroupObj = 0x04
	ACLGroup    = 0x08
	ACLMask     = 0x10
	ACLOther    = 0x20

	aclXattrVersion = 2
	aclUndefinedID  = 0xffffffff
)

// ACLEntry is one entry of a POSIX ACL. Perm is a combination of 4 (read),
// 2 (write) and 1 (execute). ID is only meaningful for ACLUser/ACLGroup.
type ACLEntry struct {
	Tag  uint16
	Perm uint16
	ID   uint32
}

// EncodeACL returns the raw value of a system.posix_acl_access or
// system.posix_acl_default xattr: a little-endian u32 version (2) followed by
// one {u16 tag, u16 perm, u32 id} record per entry, sorted by tag then id.
// IDs of entries other than ACLUser/ACLGroup are written as
// ACL_UNDEFINED_ID, which is also what the kernel returns when reading.
func EncodeACL(entries []ACLEntry) []byte {
	es := append([]ACLEntry(nil), entries...)
	for i := range es {
		if es[i].Tag != ACLUser && es[i].Tag != ACLGroup {
			es[i].ID = aclUndefinedID
		}
	}
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Tag != es[j].Tag {
			return es[i].Tag < es[j].Tag
		}
		return es[i].ID < es[j].ID
	})
	b := make([]byte, 4+8*len(es))
	binary.LittleEndian.PutUint32(b, aclXattrVersion)
	for i, e := range es {
		o := 4 + 8*i
		binary.LittleEndian.PutUint16(b[o:], e.Tag)
		binary.LittleEndian.PutUint16(b[o+2:], e.Perm)
		binary.LittleEndian.PutUint32(b[o+4:], e.ID)
	}
	return b
}
