package differ

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Record layouts (big-endian; keys are paths with a NUL terminator, so the
// order depends on the path alone).

// A path record: the key, then kind, type, dev, ino, and the directory id
// (the directory's own for kindDir, its parent's for entries).
const (
	kindDir   = 'd'
	kindEntry = 'e'
	pathTail  = 1 + 1 + 8 + 8 + 4
)

func appendKey(dst, rel []byte) []byte {
	dst = append(dst, rel...)
	return append(dst, 0)
}

func appendPath(dst, rel []byte, kind, typ uint8, dev, ino uint64, dir uint32) []byte {
	dst = appendKey(dst, rel)
	dst = append(dst, kind, typ)
	dst = binary.BigEndian.AppendUint64(dst, dev)
	dst = binary.BigEndian.AppendUint64(dst, ino)
	return binary.BigEndian.AppendUint32(dst, dir)
}

type pathRec struct {
	key       []byte // with the NUL
	kind, typ uint8
	dev, ino  uint64
	dir       uint32
}

func (p *pathRec) node() Node { return Node{Type: p.typ, Dev: p.dev, Ino: p.ino} }

func decodePath(rec []byte) (pathRec, error) {
	i := bytes.IndexByte(rec, 0)
	if i < 0 || len(rec)-i-1 != pathTail {
		return pathRec{}, fmt.Errorf("differ: bad path record")
	}
	t := rec[i+1:]
	return pathRec{key: rec[:i+1], kind: t[0], typ: t[1], dev: binary.BigEndian.Uint64(t[2:]), ino: binary.BigEndian.Uint64(t[10:]), dir: binary.BigEndian.Uint32(t[18:])}, nil
}

func keyPath(key []byte) string { return string(key[:len(key)-1]) }

func keyName(key []byte) string {
	p := key[:len(key)-1]
	if i := bytes.LastIndexByte(p, '/'); i >= 0 {
		return string(p[i+1:])
	}
	return string(p)
}

// A pair record: the source dev and ino, the destination dev and ino, the
// path key (so that within a pair, paths come in path order), then the two
// parent directory ids and the type. A source path that DST lacks has the
// destination (absent, absent), which sorts after every real inode: the
// pairs walk meets a source inode's matched paths before its missing ones.
// The reverse records (sorted by destination inode) have the two sides
// swapped and stop after the key.
const (
	pairHead = 32
	pairTail = 4 + 4 + 1
	absent   = math.MaxUint64
)

func appendPair(dst []byte, a, b Node, key []byte, adir, bdir uint32, typ uint8) []byte {
	dst = binary.BigEndian.AppendUint64(dst, a.Dev)
	dst = binary.BigEndian.AppendUint64(dst, a.Ino)
	dst = binary.BigEndian.AppendUint64(dst, b.Dev)
	dst = binary.BigEndian.AppendUint64(dst, b.Ino)
	dst = append(dst, key...)
	dst = binary.BigEndian.AppendUint32(dst, adir)
	dst = binary.BigEndian.AppendUint32(dst, bdir)
	return append(dst, typ)
}

func pairKey(rec []byte) []byte { return rec[pairHead : len(rec)-pairTail] }

// pairMissing reports whether a pair record is a source path DST lacks.
func pairMissing(rec []byte) bool {
	return binary.BigEndian.Uint64(rec[16:]) == absent && binary.BigEndian.Uint64(rec[24:]) == absent
}

// A difference record, sorted by path for the report: the path key, the
// code and a NUL, both sides' nodes, the peer path and a NUL, the detail.
const diffNodes = 2 * (1 + 8 + 8)

func appendDiff(dst, key []byte, code string, src, dst2 Node, peer []byte, detail string) []byte {
	dst = append(dst, key...)
	dst = append(dst, code...)
	dst = append(dst, 0)
	for _, n := range []Node{src, dst2} {
		dst = append(dst, n.Type)
		dst = binary.BigEndian.AppendUint64(dst, n.Dev)
		dst = binary.BigEndian.AppendUint64(dst, n.Ino)
	}
	dst = append(dst, peer...)
	dst = append(dst, 0)
	return append(dst, detail...)
}

var errBadDiff = errors.New("differ: bad difference record")

func decodeDiff(rec []byte) (Diff, error) {
	i := bytes.IndexByte(rec, 0)
	if i < 0 {
		return Diff{}, errBadDiff
	}
	d := Diff{Path: string(rec[:i])}
	rest := rec[i+1:]
	j := bytes.IndexByte(rest, 0)
	if j < 0 || len(rest) < j+1+diffNodes {
		return Diff{}, errBadDiff
	}
	d.Code, d.Kind = string(rest[:j]), KindOf(string(rest[:j]))
	rest = rest[j+1:]
	for _, n := range []*Node{&d.Src, &d.Dst} {
		n.Type, n.Dev, n.Ino = rest[0], binary.BigEndian.Uint64(rest[1:]), binary.BigEndian.Uint64(rest[9:])
		rest = rest[17:]
	}
	k := bytes.IndexByte(rest, 0)
	if k < 0 {
		return Diff{}, errBadDiff
	}
	d.Peer, d.Detail = string(rest[:k]), string(rest[k+1:])
	return d, nil
}
