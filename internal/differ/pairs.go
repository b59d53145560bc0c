package differ

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"sync/atomic"

	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// pairs walks the (source inode, destination inode) pairs sorted by source
// inode. A source inode with two destination inodes was split. Each
// distinct pair is compared once, by the workers. A source path that DST
// lacks comes after its inode's matched paths, so its Missing difference
// names one of them (Peer) when there is one.
func (r *run) pairs() error {
	ctr := r.o.Progress.Phase("inodes", "paths", "")
	ctr.Total.Store(r.npairs)
	rd, done := extsort.MergeStream(r.src.pathRuns, r.src.pairTmp, r.mem().VerifyMerge(), nil)
	tasks := r.startWorkers(ctr)
	var group []byte      // source (dev, ino) of the current group
	var first, cur []byte // first matched record of the group / of the current pair
	var pending *task     // the current pair, sent when its last path is seen
	send := func() {
		if pending != nil {
			tasks.in <- *pending
			pending = nil
		}
	}
	n := 0
	err := eachRecord(rd, pairHead+1+pairTail, "pair", func(rec []byte) error {
		if n++; n%4096 == 0 && r.ctx.Err() != nil {
			return context.Cause(r.ctx)
		}
		ctr.Done.Add(1)
		key := pairKey(rec)
		src, dst := pairNodes(rec)
		if r.o.Pairs != nil {
			tail := rec[len(rec)-pairTail:]
			p := Pair{Path: key[:len(key)-1], Src: src, Dst: dst, SrcDir: binary.BigEndian.Uint32(tail), DstDir: binary.BigEndian.Uint32(tail[4:])}
			if err := r.o.Pairs(p); err != nil {
				return err
			}
		}
		if group == nil || !bytes.Equal(group, rec[:16]) {
			group = append(group[:0], rec[:16]...)
			first, cur = first[:0], cur[:0]
		}
		if pairMissing(rec) {
			var peer []byte
			if len(first) > 0 {
				peer = pairKey(first)[:len(pairKey(first))-1]
			}
			r.diff(CodeMissing, key, src, Node{}, peer, "")
			return nil
		}
		if len(first) == 0 {
			first = append(first, rec...)
		} else if !bytes.Equal(first[16:32], rec[16:32]) {
			peer := pairKey(first)
			r.diff(CodeSplit, key, src, dst, peer[:len(peer)-1], "shares an inode with %s in SRC but not in DST", msg.Quote(keyPath(peer)))
		}
		if len(cur) > 0 && bytes.Equal(cur[:pairHead], rec[:pairHead]) {
			pending.others++ // same pair: compared once
			return nil
		}
		send()
		cur = append(cur[:0], rec...)
		r.res.InodePairs++
		tail := rec[len(rec)-pairTail:]
		be := binary.BigEndian
		t := task{typ: tail[8], key: append([]byte(nil), key...), src: src, dst: dst, sdir: be.Uint32(tail), ddir: be.Uint32(tail[4:])}
		t.checksum = t.typ == fsx.TypeReg && (r.o.Checksum || r.sample > 0 && r.sampled(src.Dev, src.Ino))
		pending = &t
		return nil
	})
	if err == nil {
		send()
	}
	tasks.stop()
	if e := done(); err == nil {
		err = e
	}
	r.o.Progress.End()
	return err
}

// pairNodes decodes the two sides of a pair record (the destination is
// the zero Node when absent).
func pairNodes(rec []byte) (src, dst Node) {
	be := binary.BigEndian
	typ := rec[len(rec)-1]
	src = Node{Type: typ, Dev: be.Uint64(rec), Ino: be.Uint64(rec[8:])}
	if !pairMissing(rec) {
		dst = Node{Type: typ, Dev: be.Uint64(rec[16:]), Ino: be.Uint64(rec[24:])}
	}
	return src, dst
}

// eachRecord calls fn with every record of rd (valid during the call) until
// the end, an error, or a record shorter than min (a damaged sort file).
func eachRecord(rd *extsort.Reader, min int, what string, fn func(rec []byte) error) error {
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(rec) < min {
			return fmt.Errorf("differ: bad %s record", what)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

func (r *run) sampled(dev, ino uint64) bool {
	x := (dev*0x9E3779B97F4A7C15 ^ ino*0xC2B2AE3D27D4EB4F ^ r.seed) * 0x165667B19E3779F9
	return x>>32 < r.sample
}

// reverse walks the pairs sorted by destination inode: a destination inode
// reached from two source inodes joined what the source kept apart.
func (r *run) reverse() error {
	rd, done := extsort.MergeStream(r.dst.pathRuns, r.dst.pairTmp, r.mem().VerifyMerge(), nil)
	var first []byte
	sh := sharing{fn: r.o.Shared}
	err := eachRecord(rd, pairHead+1, "reverse pair", func(rec []byte) error {
		if err := sh.add(rec); err != nil {
			return err
		}
		if first == nil || !bytes.Equal(first[:16], rec[:16]) {
			first = append(first[:0], rec...)
		} else if !bytes.Equal(first[16:32], rec[16:32]) {
			be := binary.BigEndian
			dst := Node{Dev: be.Uint64(rec), Ino: be.Uint64(rec[8:])}
			src := Node{Dev: be.Uint64(rec[16:]), Ino: be.Uint64(rec[24:])}
			peer := first[pairHead:]
			r.diff(CodeJoined, rec[pairHead:], src, dst, peer[:len(peer)-1], "shares an inode with %s in DST but not in SRC", msg.Quote(keyPath(peer)))
		}
		return nil
	})
	if err == nil {
		err = sh.flush()
	}
	if e := done(); err == nil {
		err = e
	}
	return err
}

// sharing finds, in the reverse pairs walk, the destination inodes that
// more than one source inode reaches, and tells Options.Shared of each
// (destination, source) run of paths. A destination's first run is held
// until a second one shows, and dropped if none does.
type sharing struct {
	fn     func(dst, src Node, paths int64) error
	dst    Node
	have   bool
	first  srcRun // the destination's first run, held
	cur    srcRun
	shared bool // the destination has two runs or more
}

type srcRun struct {
	src Node
	n   int64
}

func (s *sharing) add(rec []byte) error {
	if s.fn == nil {
		return nil
	}
	be := binary.BigEndian
	dst := Node{Dev: be.Uint64(rec), Ino: be.Uint64(rec[8:])}
	src := Node{Dev: be.Uint64(rec[16:]), Ino: be.Uint64(rec[24:])}
	if s.have && dst == s.dst && src == s.cur.src {
		s.cur.n++
		return nil
	}
	if err := s.endRun(); err != nil {
		return err
	}
	if !s.have || dst != s.dst {
		s.dst, s.have, s.shared, s.first = dst, true, false, srcRun{}
	}
	s.cur = srcRun{src, 1}
	return nil
}

// endRun is the end of the current run (its destination may go on).
func (s *sharing) endRun() error {
	if !s.have || s.cur.n == 0 {
		return nil
	}
	if !s.shared && s.first.n == 0 {
		s.first = s.cur // held: it may be the destination's only one
		return nil
	}
	if !s.shared {
		s.shared = true
		if err := s.fn(s.dst, s.first.src, s.first.n); err != nil {
			return err
		}
	}
	return s.fn(s.dst, s.cur.src, s.cur.n)
}

func (s *sharing) flush() error {
	if s.fn == nil {
		return nil
	}
	return s.endRun()
}

// report sorts the differences by path and hands them to the consumer.
func (r *run) report(c Consumer) (Result, error) {
	runs, n, _, err := r.diffs.Finish()
	if err != nil {
		return r.res, err
	}
	r.res.Diffs = n
	r.res.Errors = r.errs.Load()
	r.res.SrcUnread = r.src.scanErrs.Load()
	r.res.ByCode = map[string]int64{}
	r.byCode.Range(func(k, v any) bool {
		r.res.ByCode[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	if n == 0 {
		return r.res, nil
	}
	rd, done := extsort.MergeStream(runs, nil, r.mem().VerifyMerge(), nil)
	err = eachRecord(rd, 2, "difference", func(rec []byte) error {
		d, err := decodeDiff(rec)
		if err != nil {
			return err
		}
		return c.Difference(d)
	})
	if e := done(); err == nil {
		err = e
	}
	return r.res, err
}
