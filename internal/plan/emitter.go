package plan

import (
	"golang.org/x/sys/unix"

	"hlcp/internal/extsort"
)

// Emitter turns the scan's output into the sort's records (entries and
// directories), batched per scan worker: the scan side of the plan. It is
// a scan.Emitter.
type Emitter struct {
	ents, dirs *extsort.Sorter
	ebuf, dbuf []byte
	eend, dend []int
	recs       [][]byte
}

func (e *Emitter) Dir(d *Dir, rel []byte) error {
	e.dbuf = AppendDir(e.dbuf, d)
	e.dend = append(e.dend, len(e.dbuf))
	return nil
}

func (e *Emitter) Entry(dir uint32, dev, ino uint64, typ uint8, name []byte, _ []byte, _ *unix.Stat_t) error {
	e.ebuf = AppendEntry(e.ebuf, dev, ino, dir, typ, name)
	e.eend = append(e.eend, len(e.ebuf))
	if len(e.ebuf) >= 256<<10 {
		return e.flushEntries()
	}
	return nil
}

func (e *Emitter) batch(buf []byte, ends []int) [][]byte {
	e.recs = e.recs[:0]
	start := 0
	for _, end := range ends {
		e.recs = append(e.recs, buf[start:end])
		start = end
	}
	return e.recs
}

func (e *Emitter) flushEntries() error {
	if len(e.eend) > 0 {
		if err := e.ents.AddBatch(e.batch(e.ebuf, e.eend)); err != nil {
			return err
		}
	}
	e.ebuf, e.eend = e.ebuf[:0], e.eend[:0]
	return nil
}

func (e *Emitter) Flush() error {
	if err := e.flushEntries(); err != nil {
		return err
	}
	if len(e.dend) > 0 {
		if err := e.dirs.AddBatch(e.batch(e.dbuf, e.dend)); err != nil {
			return err
		}
	}
	e.dbuf, e.dend = e.dbuf[:0], e.dend[:0]
	return nil
}

// NewEmitter returns an emitter into the sorters of entries and of
// directories.
func NewEmitter(ents, dirs *extsort.Sorter) *Emitter { return &Emitter{ents: ents, dirs: dirs} }
