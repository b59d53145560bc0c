package mirror

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// A decision, for a source inode that needs work: the DST inode kept for
// it (zero: none) and a path of DST where it is, whether its metadata needs
// a fix, and (after the match pass) a path only DST has whose inode is a
// copy of it. Decisions are in source-inode order.
type decision struct {
	src      inode
	typ      uint8
	keep     inode
	keepPath []byte
	metaFix  bool
	reuse    []byte // a path only DST has, whose inode is a copy of the source (a rename)
	first    []byte // the group's first path (in SRC)
}

func (d *decision) append(dst []byte) []byte {
	be := binary.BigEndian
	dst = be.AppendUint64(dst, d.src.dev)
	dst = be.AppendUint64(dst, d.src.ino)
	dst = append(dst, d.typ)
	dst = be.AppendUint64(dst, d.keep.dev)
	dst = be.AppendUint64(dst, d.keep.ino)
	m := byte(0)
	if d.metaFix {
		m = 1
	}
	dst = append(dst, m)
	for _, p := range [][]byte{d.keepPath, d.reuse, d.first} {
		dst = binary.AppendUvarint(dst, uint64(len(p)))
		dst = append(dst, p...)
	}
	return dst
}

func decodeDecision(rec []byte) (decision, error) {
	const head = 8 + 8 + 1 + 8 + 8 + 1
	if len(rec) < head {
		return decision{}, fmt.Errorf("mirror: bad decision record")
	}
	be := binary.BigEndian
	d := decision{src: inode{be.Uint64(rec), be.Uint64(rec[8:])}, typ: rec[16], keep: inode{be.Uint64(rec[17:]), be.Uint64(rec[25:])}, metaFix: rec[33] == 1}
	rest := rec[head:]
	for _, p := range []*[]byte{&d.keepPath, &d.reuse, &d.first} {
		n, k := binary.Uvarint(rest)
		if k <= 0 || uint64(len(rest)-k) < n {
			return decision{}, fmt.Errorf("mirror: bad decision record")
		}
		*p, rest = rest[k:k+int(n)], rest[k+int(n):]
	}
	return d, nil
}

// groupWalker reads the groups (source paths by source inode) merged with
// the flags (what is wrong with each pair, and the occupied paths), one
// source inode at a time.
type groupWalker struct {
	gr      source
	fr      source
	g       groupRec // the next group record (ok)
	gok     bool
	f       flagRec // the next flag record
	fok     bool
	gbuf    []byte
	fbuf    []byte
	err     error
	nGroups int64
}

func newGroupWalker(gr, fr source) (*groupWalker, error) {
	w := &groupWalker{gr: gr, fr: fr}
	w.nextG()
	w.nextF()
	return w, w.err
}

// pull reads the next record of src into buf; ok is false at its end or
// on an error (w.err).
func (w *groupWalker) pull(src source, buf *[]byte) (ok bool) {
	rec, err := src.next()
	if err != nil {
		if err != io.EOF {
			w.err = err
		}
		return false
	}
	*buf = append((*buf)[:0], rec...)
	return true
}

func (w *groupWalker) nextG() {
	if w.gok = w.pull(w.gr, &w.gbuf); w.gok {
		w.g, w.err = decodeGroup(w.gbuf)
		w.gok = w.err == nil
	}
}

func (w *groupWalker) nextF() {
	if w.fok = w.pull(w.fr, &w.fbuf); w.fok {
		w.f, w.err = decodeFlag(w.fbuf)
		w.fok = w.err == nil
	}
}

// groupVisitor sees one source inode's paths: each path DST has or lacks
// (at, with the flags of its pair), then the paths where DST has another
// type (occupied). typ is the source inode's type.
type groupVisitor interface {
	begin(src inode, typ uint8) error
	at(path []byte, dst inode, absent bool, flags uint8) error
	occupied(path []byte) error
	end() error
}

// walk calls v for every source inode, in order.
func (w *groupWalker) walk(v groupVisitor) error {
	for w.err == nil && (w.gok || w.fok) {
		// The next source inode: the smaller of the two streams' heads.
		var src inode
		var typ uint8
		switch {
		case w.gok && (!w.fok || !less(w.f.src, w.g.src)):
			src, typ = w.g.src, w.g.typ
		default:
			src, typ = w.f.src, 0 // only occupied paths: its type is read in SRC
		}
		w.nGroups++
		if err := v.begin(src, typ); err != nil {
			return err
		}
		for w.gok && w.g.src == src && w.err == nil {
			// The flags of this pair (records of one pair may repeat).
			var flags uint8
			for w.fok && w.f.src == src && less(w.f.dst, w.g.dst) {
				w.nextF() // a pair the groups no longer have
			}
			for w.fok && w.f.src == src && w.f.dst == w.g.dst && w.f.flags&flagOccupied == 0 {
				flags |= w.f.flags
				w.nextF()
			}
			// Every path of the same pair gets the same flags.
			dst, absent := w.g.dst, w.g.absent
			for w.gok && w.g.src == src && w.g.dst == dst && w.err == nil {
				if err := v.at(w.g.path, dst, absent, flags); err != nil {
					return err
				}
				w.nextG()
			}
		}
		for w.fok && w.f.src == src && w.err == nil {
			if w.f.flags&flagOccupied != 0 {
				if err := v.occupied(w.f.path); err != nil {
					return err
				}
			}
			w.nextF()
		}
		if w.err != nil {
			return w.err // a source inode partly read: not ended
		}
		if err := v.end(); err != nil {
			return err
		}
	}
	return w.err
}

// decider is the decide pass's visitor.
type decider struct {
	m   *Mirror
	out *spool
	// kept: every DST inode that a source inode's paths reach as a copy
	// of it (kept, or kept beside a full one); stale: a path of each DST
	// inode a source path reaches that is no copy of its source (it will
	// be relinked): the data there may be another source inode's.
	kept, stale *spool
	d           decision
	rec         []byte
	krec        []byte
	// the current run of paths at one DST inode
	run      inode
	runN     int64
	runPath  []byte
	runFlags uint8
	runAbs   bool
	bestN    int64
	bestMeta bool
	runs     int  // distinct DST inodes (and absence) seen
	absent   bool // some path DST lacks
	occupy   bool // some path DST has as another type
	err      error
}

func appendInode(dst []byte, n inode) []byte {
	dst = binary.BigEndian.AppendUint64(dst, n.dev)
	return binary.BigEndian.AppendUint64(dst, n.ino)
}

func (v *decider) begin(src inode, typ uint8) error {
	v.d = decision{src: src, typ: typ}
	v.runN, v.bestN, v.bestMeta, v.runs, v.absent, v.occupy = 0, 0, false, 0, false, false
	v.runPath, v.runAbs = v.runPath[:0], false
	return nil
}

func (v *decider) at(path []byte, dst inode, absent bool, flags uint8) error {
	if len(v.d.first) == 0 {
		v.d.first = append(v.d.first[:0], path...)
	}
	if v.runN == 0 || dst != v.run || absent != v.runAbs {
		v.endRun()
		v.run, v.runN, v.runFlags, v.runAbs = dst, 0, flags, absent
		v.runPath = append(v.runPath[:0], path...)
		v.runs++
	}
	v.runN++
	return nil
}

// endRun weighs the run just ended as the kept inode: not absent, a copy
// of the source, not another source inode's; the one with most paths.
func (v *decider) endRun() {
	if v.runN == 0 {
		return
	}
	if v.runAbs {
		v.absent = true
		return
	}
	if v.runFlags&(flagContent|flagJoined) == 0 {
		v.krec = appendInode(v.krec[:0], v.run)
		v.keepErr(v.kept.add(v.krec))
	} else if v.d.typ == fsx.TypeReg {
		v.krec = append(appendInode(v.krec[:0], v.run), v.runPath...)
		v.keepErr(v.stale.add(v.krec))
	}
	if v.runFlags&(flagContent|flagJoined) == 0 && v.runN > v.bestN {
		v.bestN, v.d.keep, v.bestMeta = v.runN, v.run, v.runFlags&flagMeta != 0
		v.d.keepPath = append(v.d.keepPath[:0], v.runPath...)
	}
	v.runN = 0
}

func (v *decider) occupied(path []byte) error {
	if len(v.d.first) == 0 {
		v.d.first = append(v.d.first[:0], path...)
	}
	v.occupy = true
	return nil
}

// keepErr keeps the first error of a spool written in endRun.
func (v *decider) keepErr(err error) {
	if err != nil && v.err == nil {
		v.err = err
	}
}

func (v *decider) end() error {
	v.endRun()
	if v.err != nil {
		return v.err
	}
	v.d.metaFix = v.bestMeta
	if v.bestN > 0 && v.runs == 1 && !v.absent && !v.occupy && !v.d.metaFix {
		v.m.st.Kept += v.bestN // every path at the one inode it should be at
		return nil
	}
	if v.bestN > 0 {
		v.m.st.Kept += v.bestN
	}
	v.rec = v.d.append(v.rec[:0])
	return v.out.add(v.rec)
}

// groupWalker opens a walk of the source inodes: the groups with the
// flags and the losers (decide and apply both walk them).
func (m *Mirror) groupWalker(c *collector) (*groupWalker, error) {
	gr, err := c.groups.reader()
	if err != nil {
		return nil, err
	}
	fr, err := m.flagsAndLosers(c)
	if err != nil {
		return nil, err
	}
	return newGroupWalker(gr, fr)
}

// decide is the first pass: per source inode, the DST inode to keep.
func (m *Mirror) decide(c *collector) error {
	ctr := m.o.Progress.Phase("decide", "inodes", "")
	defer m.o.Progress.End()
	w, err := m.groupWalker(c)
	if err != nil {
		return err
	}
	out, err := m.newSpool("decisions")
	if err != nil {
		return err
	}
	c.decisions = out
	if c.kept, err = m.newSpool("kept"); err != nil {
		return err
	}
	if c.stale, err = m.newSpool("stale"); err != nil {
		return err
	}
	v := &decider{m: m, out: out, kept: c.kept, stale: c.stale}
	err = w.walk(countingVisitor{v, &ctr.Done})
	if err != nil {
		return fmt.Errorf("decide: %w", err)
	}
	for _, s := range []*spool{out, c.kept, c.stale} {
		if err := s.finish(); err != nil {
			return err
		}
	}
	return nil
}

// flagsAndLosers is the flags merged with the claims that lost: what the
// group walks read.
func (m *Mirror) flagsAndLosers(c *collector) (source, error) {
	fr, err := m.sorted(c.flags, "flags")
	if err != nil {
		return nil, err
	}
	lr, err := m.sorted(c.losers, "losers")
	if err != nil {
		return nil, err
	}
	return &merged{a: fr, b: lr}, nil
}

// countingVisitor counts the source inodes for the progress display.
type countingVisitor struct {
	groupVisitor
	ctr interface{ Add(int64) int64 }
}

func (c countingVisitor) end() error {
	c.ctr.Add(1)
	return c.groupVisitor.end()
}

// sorted finishes a sort (the first time) and returns a reader of its
// merged records; a sort can be read again.
func (m *Mirror) sorted(s *extsort.Sorter, name string) (*recReader, error) {
	runs, ok := m.runs[s]
	if !ok {
		var err error
		if runs, _, _, err = s.Finish(); err != nil {
			return nil, err
		}
		m.runs[s] = runs
	}
	r, wait := extsort.MergeStream(runs, nil, m.mem().VerifyMerge(), nil)
	m.waits = append(m.waits, wait)
	return &recReader{r: r, want: -1, name: name}, nil
}

// --- renames ---

// minReuse is the smallest file worth looking for among the data DST
// holds at other paths: below it, copying costs about what comparing
// would.
const minReuse = 64 << 10

// A size record, for the match of renames: size, mtime, side (0: a source
// inode that needs a copy; 1: a DST inode no source inode keeps), the
// inode, then a path of it (in SRC for a source inode, in DST for a DST
// inode); sorted by (size, mtime) with the source inodes first.
func appendSize(dst []byte, size int64, mt unix.Timespec, side byte, n inode, path []byte) []byte {
	be := binary.BigEndian
	dst = be.AppendUint64(dst, uint64(size))
	dst = be.AppendUint64(dst, uint64(mt.Sec))
	dst = be.AppendUint32(dst, uint32(mt.Nsec))
	dst = append(dst, side)
	dst = be.AppendUint64(dst, n.dev)
	dst = be.AppendUint64(dst, n.ino)
	return append(dst, path...)
}

const sizeHead = 8 + 8 + 4 + 1 + 8 + 8

// matchRenames is the second pass: a source inode that has no DST inode to
// keep, and whose data DST already holds in an inode that no source inode
// keeps (a file renamed, or in a renamed directory, at a path only DST
// has; or, after a rotation, a version that DST has at a path where SRC
// now has another), reuses that inode instead of being copied again: same
// size, mtime and bytes. Each DST inode is reused at most once.
func (m *Mirror) matchRenames(c *collector) error {
	sizes, _, err := m.newSorter("sizes", m.mem().VerifyPaths())
	if err != nil {
		return err
	}
	var rec []byte
	var st unix.Stat_t
	// The source inodes that need data, and their size.
	n := 0
	err = eachRecord(c.decisions, func(b []byte) error {
		d, err := decodeDecision(b)
		if err != nil {
			return err
		}
		if d.keep != (inode{}) || d.typ != fsx.TypeReg {
			return nil
		}
		if !m.lstat(m.srcs, d.first, &st) || st.Size < minReuse || st.Dev != d.src.dev || st.Ino != d.src.ino {
			return nil
		}
		n++
		rec = appendSize(rec[:0], st.Size, st.Mtim, 0, d.src, d.first)
		return sizes.Add(rec)
	})
	if err != nil || n == 0 {
		return err
	}
	nc, err := m.freeInodes(c, sizes)
	if err != nil || nc == 0 {
		return err
	}
	renames, _, err := m.newSorter("renames", m.mem().VerifyDiffs())
	if err != nil {
		return err
	}
	if err := m.pairSizes(sizes, renames); err != nil {
		return err
	}
	return m.applyRenames(c, renames)
}

// freeInodes adds to sizes a size record for every regular DST inode of
// minReuse or more that is at a path only DST has, or at a path whose
// source is another inode, and that no source inode keeps: the data that
// would otherwise be deleted, or lose its path.
func (m *Mirror) freeInodes(c *collector, sizes *extsort.Sorter) (int, error) {
	cands, _, err := m.newSorter("candidates", m.mem().VerifyPaths())
	if err != nil {
		return 0, err
	}
	var rec []byte
	var st unix.Stat_t
	n := 0
	add := func(path []byte, want inode) error {
		if !m.lstat(m.dsts, path, &st) || st.Size < minReuse || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil
		}
		ino := inode{st.Dev, st.Ino}
		if want != (inode{}) && ino != want {
			return nil // changed since the scan
		}
		n++
		rec = appendInode(rec[:0], ino)
		rec = appendSize(rec, st.Size, st.Mtim, 1, ino, path)
		return cands.Add(rec)
	}
	err = eachPathRecord(c.extras, func(typ byte, path []byte) error {
		if typ&^underReplaced != fsx.TypeReg {
			return nil
		}
		return add(path, inode{})
	})
	if err != nil {
		return 0, err
	}
	err = eachRecord(c.stale, func(b []byte) error {
		if len(b) < 16 {
			return fmt.Errorf("mirror: bad stale record")
		}
		return add(b[16:], inode{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])})
	})
	if err != nil || n == 0 {
		return 0, err
	}
	// Join with the kept inodes, both by DST inode: one record of each
	// free inode goes on.
	keptSort, _, err := m.newSorter("kept", m.mem().VerifyPaths())
	if err != nil {
		return 0, err
	}
	if err := eachRecord(c.kept, keptSort.Add); err != nil {
		return 0, err
	}
	kr, err := m.sorted(keptSort, "kept")
	if err != nil {
		return 0, err
	}
	cr, err := m.sorted(cands, "candidates")
	if err != nil {
		return 0, err
	}
	var kept []byte
	kerr := error(nil)
	if b, err := kr.next(); err == nil {
		kept = append(kept[:0], b...)
	} else {
		kerr = err
	}
	var last []byte
	free := 0
	for {
		b, err := cr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		if len(b) < 16+sizeHead {
			return 0, fmt.Errorf("mirror: bad candidate record")
		}
		if last != nil && bytes.Equal(last, b[:16]) {
			continue // one path of an inode is enough
		}
		last = append(last[:0], b[:16]...)
		for kerr == nil && bytes.Compare(kept, b[:16]) < 0 {
			if k, err := kr.next(); err == nil {
				kept = append(kept[:0], k...)
			} else {
				kerr = err
			}
		}
		if kerr != nil && kerr != io.EOF {
			return 0, kerr
		}
		if kerr == nil && bytes.Equal(kept, b[:16]) {
			continue // a source inode keeps it
		}
		free++
		if err := sizes.Add(b[16:]); err != nil {
			return 0, err
		}
	}
	return free, nil
}

// pairSizes walks the size records: within one (size, mtime), each source
// inode takes the first free DST inode whose bytes are the source's, and
// each DST inode is taken once.
func (m *Mirror) pairSizes(sizes, renames *extsort.Sorter) error {
	r, err := m.sorted(sizes, "sizes")
	if err != nil {
		return err
	}
	var key []byte
	var srcs [][]byte // the source records of this key (few: same size and mtime)
	var rec []byte
	for {
		b, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(b) < sizeHead {
			return fmt.Errorf("mirror: bad size record")
		}
		if !bytes.Equal(key, b[:20]) {
			key, srcs = append(key[:0], b[:20]...), srcs[:0]
		}
		if b[20] == 0 {
			if len(srcs) < 64 {
				srcs = append(srcs, append([]byte(nil), b...))
			}
			continue
		}
		dst := inode{binary.BigEndian.Uint64(b[21:]), binary.BigEndian.Uint64(b[29:])}
		for i, s := range srcs {
			if s == nil || !m.sameBytes(s[sizeHead:], b[sizeHead:]) {
				continue
			}
			src := inode{binary.BigEndian.Uint64(s[21:]), binary.BigEndian.Uint64(s[29:])}
			rec = appendFlag(rec[:0], src, dst, 0, b[sizeHead:])
			if err := renames.Add(rec); err != nil {
				return err
			}
			srcs[i] = nil
			break
		}
	}
}

// applyRenames writes the decisions again, each source inode that found a
// copy of itself in DST with a path of it. Outside a dry run that path is
// a new temporary name linked to the inode now, before any path changes:
// the inode's own paths may be relinked or deleted before the source inode
// is applied. A killed run leaves the temporary names, which the next run
// sees as paths only DST has (and may reuse again).
func (m *Mirror) applyRenames(c *collector, renames *extsort.Sorter) error {
	rr, err := m.sorted(renames, "renames")
	if err != nil {
		return err
	}
	out, err := m.newSpool("decisions2")
	if err != nil {
		return err
	}
	next, err := rr.next()
	var ren flagRec
	if err == nil {
		ren, err = decodeFlag(next)
	}
	rok := err == nil
	if err != nil && err != io.EOF {
		return err
	}
	var rec []byte
	err = eachRecord(c.decisions, func(b []byte) error {
		d, err := decodeDecision(b)
		if err != nil {
			return err
		}
		for rok && less(ren.src, d.src) {
			if next, err = rr.next(); err == nil {
				ren, err = decodeFlag(next)
			}
			rok = err == nil
		}
		if rok && ren.src == d.src {
			d.reuse = ren.path
			if !m.o.DryRun {
				if d.reuse, err = m.holdReuse(ren.path, ren.dst); err != nil {
					return err
				}
			}
		}
		rec = d.append(rec[:0])
		return out.add(rec)
	})
	if err != nil {
		return err
	}
	c.decisions = out
	return out.finish()
}

// holdReuse links DST inode want, at path, to a new name and returns it:
// in the run's own directory (in the state directory, which the next run
// empties) where it is on DST's filesystem, else a temporary name in
// path's directory (which the next run sees as a path only DST has). It
// returns nil when path is no longer that inode: the source inode is then
// copied.
func (m *Mirror) holdReuse(path []byte, want inode) ([]byte, error) {
	pfd, name, err := m.dsts.parent(path)
	if err != nil {
		return nil, nil
	}
	tmp := m.tmpName()
	held := []byte(heldPrefix + tmp)
	if err := unix.Linkat(pfd, name, m.runDir.Fd(), tmp, 0); err != nil {
		held = []byte(tmp)
		if dir, _ := split(path); dir != "" {
			held = []byte(dir + "/" + tmp)
		}
		if err := m.writable(pfd, path, func() error { return unix.Linkat(pfd, name, pfd, tmp, 0) }); err != nil {
			return nil, nil
		}
	}
	hfd, hname, err := m.dstEntry(held)
	var st unix.Stat_t
	if err != nil || unix.Fstatat(hfd, hname, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != want.dev || st.Ino != want.ino {
		if err == nil {
			unix.Unlinkat(hfd, hname, 0)
		}
		return nil, nil
	}
	return held, nil
}

// sameBytes compares the source file at path a with DST's file at path b.
func (m *Mirror) sameBytes(a, b []byte) bool {
	sfd, err := m.openFile(m.srcs, a)
	if err != nil {
		return false
	}
	defer unix.Close(sfd)
	dfd, err := m.openFile(m.dsts, b)
	if err != nil {
		return false
	}
	defer unix.Close(dfd)
	return equalFiles(sfd, dfd)
}

// lstat stats path in one tree, never following a symlink.
func (m *Mirror) lstat(t *dirs, path []byte, st *unix.Stat_t) bool {
	pfd, name, err := t.parent(path)
	if err != nil {
		return false
	}
	return unix.Fstatat(pfd, name, st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// openFile opens the regular file path of one tree for reading.
func (m *Mirror) openFile(t *dirs, path []byte) (int, error) {
	pfd, name, err := t.parent(path)
	if err != nil {
		return -1, err
	}
	return fsx.OpenNoAtime(pfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
}

// equalFiles compares two open files byte for byte.
func equalFiles(a, b int) bool {
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		n, errA := io.ReadFull(fdReader(a), bufA)
		k, errB := io.ReadFull(fdReader(b), bufB[:max(n, 1)])
		if n != k || !bytes.Equal(bufA[:n], bufB[:k]) {
			return false
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			// b must end here too.
			var one [1]byte
			x, _ := unix.Read(b, one[:])
			return x == 0
		}
		if errA != nil || errB != nil {
			return false
		}
	}
}

type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(f), p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

// eachPathRecord calls fn with the kind and the path of every path record
// of a spool (appendPathRec); a record too short for one is an error.
func eachPathRecord(s *spool, fn func(kind byte, path []byte) error) error {
	return eachRecord(s, func(b []byte) error {
		if len(b) < 1 {
			return fmt.Errorf("mirror: bad path record in %s", s.name)
		}
		return fn(b[0], b[1:])
	})
}

// eachRecord calls fn with every record of a spool.
func eachRecord(s *spool, fn func([]byte) error) error {
	r, err := s.reader()
	if err != nil {
		return err
	}
	for {
		b, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(b); err != nil {
			return err
		}
	}
}

// source is a stream of records in key order.
type source interface {
	next() ([]byte, error)
}

// merged is two sources merged into one, in key order (bytes.Compare).
type merged struct {
	a, b       source
	ra, rb     []byte
	ea, eb     error
	primed     bool
	bufA, bufB []byte
}

func (m *merged) pull(s source, buf *[]byte) ([]byte, error) {
	r, err := s.next()
	if err != nil {
		return nil, err
	}
	*buf = append((*buf)[:0], r...)
	return *buf, nil
}

func (m *merged) next() ([]byte, error) {
	if !m.primed {
		m.primed = true
		m.ra, m.ea = m.pull(m.a, &m.bufA)
		m.rb, m.eb = m.pull(m.b, &m.bufB)
	}
	for _, e := range []error{m.ea, m.eb} {
		if e != nil && e != io.EOF {
			return nil, e
		}
	}
	switch {
	case m.ea == io.EOF && m.eb == io.EOF:
		return nil, io.EOF
	case m.eb == io.EOF || m.ea == nil && bytes.Compare(m.ra, m.rb) <= 0:
		out := append([]byte(nil), m.ra...)
		m.ra, m.ea = m.pull(m.a, &m.bufA)
		return out, nil
	default:
		out := append([]byte(nil), m.rb...)
		m.rb, m.eb = m.pull(m.b, &m.bufB)
		return out, nil
	}
}

// resolveShared decides who keeps a destination inode that paths of more
// than one source inode reach: among the source inodes whose content it
// is a copy of, the one with the most paths there (the lowest inode on a
// tie). The others lost it: their paths there are relinked, or they get a
// copy of their own.
func (m *Mirror) resolveShared(c *collector) error {
	cr, err := m.sorted(c.contested, "contested")
	if err != nil {
		return err
	}
	fr, err := m.sorted(c.flags, "flags")
	if err != nil {
		return err
	}
	claims, _, err := m.newSorter("claims", m.mem().VerifyDiffs())
	if err != nil {
		return err
	}
	if c.losers, _, err = m.newSorter("losers", m.mem().VerifyDiffs()); err != nil {
		return err
	}
	// Contested pairs, less those whose content differs.
	var f flagRec
	var fbuf, rec []byte
	fok := false
	if b, err := fr.next(); err == nil {
		fbuf = append(fbuf[:0], b...)
		f, _ = decodeFlag(fbuf)
		fok = true
	} else if err != io.EOF {
		return err
	}
	for {
		b, err := cr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		k, err := decodeFlag(b)
		if err != nil || len(k.path) != 8 {
			return fmt.Errorf("mirror: bad claim record")
		}
		var flags uint8
		for fok && (less(f.src, k.src) || f.src == k.src && !less(k.dst, f.dst)) {
			if f.src == k.src && f.dst == k.dst {
				flags |= f.flags
			}
			if b, err := fr.next(); err == nil {
				fbuf = append(fbuf[:0], b...)
				f, _ = decodeFlag(fbuf)
			} else if err == io.EOF {
				fok = false
			} else {
				return err
			}
		}
		if flags&flagContent != 0 {
			continue
		}
		// (destination, paths descending, source): the winner first.
		be := binary.BigEndian
		rec = be.AppendUint64(rec[:0], k.dst.dev)
		rec = be.AppendUint64(rec, k.dst.ino)
		rec = be.AppendUint64(rec, ^be.Uint64(k.path))
		rec = be.AppendUint64(rec, k.src.dev)
		rec = be.AppendUint64(rec, k.src.ino)
		if err := claims.Add(rec); err != nil {
			return err
		}
	}
	return m.pickWinners(c, claims)
}

// pickWinners walks the claims by destination inode: the first claim of
// each wins, the others go to the losers, by source inode.
func (m *Mirror) pickWinners(c *collector, claims *extsort.Sorter) error {
	r, err := m.sorted(claims, "claims")
	if err != nil {
		return err
	}
	var last inode
	started := false
	var rec []byte
	be := binary.BigEndian
	for {
		b, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(b) != 40 {
			return fmt.Errorf("mirror: bad claim record")
		}
		dst, src := inode{be.Uint64(b), be.Uint64(b[8:])}, inode{be.Uint64(b[24:]), be.Uint64(b[32:])}
		if started && dst == last {
			rec = appendFlag(rec[:0], src, dst, flagJoined, nil) // lost
			if err := c.losers.Add(rec); err != nil {
				return err
			}
			continue
		}
		started, last = true, dst
	}
}

// lstatDst stats path in DST (or a name held in the run's directory).
func (m *Mirror) lstatDst(path []byte, st *unix.Stat_t) bool {
	pfd, name, err := m.dstEntry(path)
	if err != nil {
		return false
	}
	return unix.Fstatat(pfd, name, st, unix.AT_SYMLINK_NOFOLLOW) == nil
}
