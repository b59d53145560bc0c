// Package differ owns the comparison of two trees in bounded memory: both
// are scanned (internal/scan), their records sorted by path on disk and
// merge-joined; each path of SRC yields a (source inode, destination
// inode) pair, its destination side empty when DST lacks the path, and
// those pairs, sorted one way and then the other, prove the link partition
// (one source inode maps to one destination inode and back) and give each
// inode pair once, so metadata and content are read once per inode however
// many paths it has.
//
// Walking is kept apart from deciding: the differ hands every difference,
// as a typed value (Diff), to a Consumer, in path order. `hlcp verify` is
// one consumer, which prints them; a mirror that repairs DST is another,
// which acts on them: a Diff says which inodes are involved on each side,
// and (Peer) where in DST the same source inode already is.
package differ

import (
	"context"
	"encoding/json"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/progress"
)

// Options of a comparison.
type Options struct {
	Src, Dst      string
	Jobs          int
	Memory        int64
	TmpDir        string
	What          What
	Checksum      bool    // hash the content of every inode pair
	Sample        float64 // else hash this percentage of inode pairs
	Hash          string  // "fast" or "sha256"
	OneFileSystem bool
	Progress      *progress.Reporter

	// For a consumer that acts on DST (a mirror):
	//
	// Tmp, when not nil, is where the sort files go (a directory of the
	// caller's, on DST's filesystem), instead of a new directory in TmpDir.
	Tmp *fsx.Dir
	// SrcFd and DstFd, when not 0, are the trees' roots already open: they
	// are scanned through them, never by their paths.
	SrcFd, DstFd int
	// DstSkip names entries of DST's root that are not part of the tree
	// (the job's own state directory): left out of the scan, silently;
	// and the root's times, which making and removing that directory
	// change, are not compared.
	DstSkip []string
	// Pairs, when not nil, gets every source path that is not a directory,
	// in source-inode order (see Pair), before the differences.
	Pairs func(Pair) error
	// Shared, when not nil, gets every destination inode that paths of
	// more than one source inode reach (what Joined reports), once per
	// such source inode, with the number of its paths there; in
	// destination-inode order.
	Shared func(dst, src Node, paths int64) error
}

// Pair is a source path, its inode, and the destination inode at the same
// path (Dst is the zero Node when DST lacks the path). Pairs come grouped by
// source inode: all the paths of one source inode together, those DST has
// first.
type Pair struct {
	Path     []byte // relative to the roots; valid during the call
	Src, Dst Node
	SrcDir   uint32 // the parent directories' ids in each tree's scan
	DstDir   uint32
}

// Result sums up a comparison.
type Result struct {
	SrcPaths    int64            `json:"src_paths"`
	DstPaths    int64            `json:"dst_paths"`
	Matched     int64            `json:"matched_paths"`
	InodePairs  int64            `json:"inode_pairs"`
	Hashed      int64            `json:"inode_pairs_hashed"`
	BytesHashed int64            `json:"bytes_hashed"`
	Diffs       int64            `json:"differences"`
	ByCode      map[string]int64 `json:"by_code"`
	Errors      int64            `json:"errors"`
	// SrcUnread counts the paths of SRC that its scan could not read
	// (a directory it could not list, a name it could not stat): what
	// DST has below them shows as extra, but SRC may have it too.
	SrcUnread int64 `json:"src_unread"`
}

// Kind is what a difference is about; Diff.Code refines Meta.
type Kind uint8

// Kinds of differences.
const (
	Missing Kind = iota + 1 // the path is only in SRC
	Extra                   // the path is only in DST
	Type                    // the path is another type of file in DST
	Meta                    // metadata: Code is mode, owner, size, mtime, atime, target, rdev, xattr or acl
	Content                 // same size, other data
	Split                   // the path's source inode is at more than one DST inode
	Joined                  // the path's DST inode serves more than one source inode
	Changed                 // the path changed while it was compared
	Error                   // the path could not be compared
)

// KindOf is the kind of a difference code.
func KindOf(code string) Kind {
	switch code {
	case CodeMissing:
		return Missing
	case CodeExtra:
		return Extra
	case CodeType:
		return Type
	case CodeContent:
		return Content
	case CodeSplit:
		return Split
	case CodeJoined:
		return Joined
	case CodeChanged:
		return Changed
	case CodeError:
		return Error
	}
	return Meta
}

// Node is one side's inode at a path: its type (fsx.Type*) and (dev, ino)
// as the scan saw them; the zero Node is "absent".
type Node struct {
	Type     uint8
	Dev, Ino uint64
}

// Diff is one difference, at one path.
type Diff struct {
	Kind   Kind   `json:"-"`
	Code   string `json:"code"`
	Path   string `json:"path"`
	Detail string `json:"detail,omitempty"`
	// Src and Dst are the inodes at Path on each side (zero when absent or
	// unknown).
	Src, Dst Node `json:"-"`
	// Peer: for Missing, a path of DST where the same source inode is
	// already (a link to it would restore the path), "" when it is
	// nowhere in DST; for Split, a path of the same source inode at
	// another DST inode; for Joined, a path of another source inode at
	// the same DST inode.
	Peer string `json:"-"`
}

// MarshalJSON keeps paths exact: JSON strings must be UTF-8, so a path that
// is not is given Go-quoted in "path" and as base64 bytes in "path_bytes".
func (d Diff) MarshalJSON() ([]byte, error) {
	type plain struct {
		Code      string `json:"code"`
		Path      string `json:"path"`
		PathBytes []byte `json:"path_bytes,omitempty"`
		Detail    string `json:"detail,omitempty"`
	}
	p := plain{Code: d.Code, Path: d.Path, Detail: strings.ToValidUTF8(d.Detail, "\ufffd")}
	if !utf8.ValidString(d.Path) {
		p.Path, p.PathBytes = msg.Quote(d.Path), []byte(d.Path)
	}
	return json.Marshal(p)
}

// Consumer receives the differences of a comparison, in path order (and,
// for one path, in order of code).
type Consumer interface {
	Difference(Diff) error
}

// ConsumerFunc is a function that is a Consumer.
type ConsumerFunc func(Diff) error

// Difference calls f.
func (f ConsumerFunc) Difference(d Diff) error { return f(d) }

// run is one comparison.
type run struct {
	ctx    context.Context
	o      Options
	tmp    *fsx.Dir
	dirs   []*fsx.Dir // temporary directories to close
	src    *side
	dst    *side
	diffs  *extsort.Sorter
	res    Result
	byCode sync.Map // code -> *atomic.Int64
	hasher *Hasher
	errs   atomic.Int64
	npairs int64  // source paths that go through the pair sort
	sample uint64 // threshold out of 1<<32, or 0
	seed   uint64
}

// Run compares o.Src with o.Dst and hands every difference to c, in path
// order. It never writes to either tree. When ctx ends it stops and
// returns the context's cause.
func Run(ctx context.Context, o Options, c Consumer) (Result, error) {
	if o.Jobs < 1 {
		o.Jobs = 4
	}
	o.Memory = int64(budget.Budget(o.Memory).Or())
	if o.Progress == nil {
		o.Progress = progress.New(io.Discard, progress.Quiet, 0)
	}
	h, err := NewHasher(o.Hash)
	if err != nil {
		return Result{}, err
	}
	r := &run{ctx: ctx, o: o, hasher: h, seed: rand.Uint64()}
	defer r.close()
	if o.Tmp != nil {
		r.tmp = o.Tmp
	} else {
		tmp, err := os.MkdirTemp(o.TmpDir, "hlcp-verify-")
		if err != nil {
			return Result{}, fmt.Errorf("temporary directory: %w", err)
		}
		defer os.RemoveAll(tmp)
		if r.tmp, err = fsx.OpenDir(tmp); err != nil {
			return Result{}, fmt.Errorf("temporary directory: %w", err)
		}
		r.dirs = append(r.dirs, r.tmp)
	}
	switch {
	case o.Sample >= 100:
		r.o.Checksum = true
	case o.Sample > 0:
		r.sample = uint64(o.Sample / 100 * (1 << 32))
	}
	diffs, err := r.mkdir(r.tmp, "diffs")
	if err != nil {
		return Result{}, err
	}
	r.diffs = extsort.New(diffs, r.mem().VerifyDiffs(), false)
	r.src = &side{name: "src", root: o.Src, rootFd: o.SrcFd}
	r.dst = &side{name: "dst", root: o.Dst, rootFd: o.DstFd, skip: o.DstSkip}
	for _, step := range []func() error{r.scan, r.join, r.pairs, r.reverse} {
		if err := step(); err != nil {
			return r.res, err
		}
		if ctx.Err() != nil {
			return r.res, context.Cause(ctx)
		}
	}
	return r.report(c)
}

// mkdir makes the temporary directory name in parent.
func (r *run) mkdir(parent *fsx.Dir, name string) (*fsx.Dir, error) {
	d, err := parent.Mkdir(name)
	if err != nil {
		return nil, err
	}
	r.dirs = append(r.dirs, d)
	return d, nil
}

func (r *run) mem() budget.Budget { return budget.Budget(r.o.Memory) }

func (r *run) close() {
	for _, s := range []*side{r.src, r.dst} {
		if s == nil {
			continue
		}
		if s.cache != nil {
			s.cache.Close()
		}
		if s.dt != nil {
			s.dt.Close()
		}
		if s.fd > 0 {
			unix.Close(s.fd)
		}
	}
	for _, d := range r.dirs {
		d.Close()
	}
}

// diff records a difference at the path key (with its NUL) for the final
// sort by path.
func (r *run) diff(code string, key []byte, src, dst Node, peer []byte, format string, args ...any) {
	rec := appendDiff(nil, key, code, src, dst, peer, fmt.Sprintf(format, args...))
	if len(rec) > extsort.MaxRecord {
		rec = rec[:extsort.MaxRecord]
	}
	r.diffs.Add(rec)
	v, _ := r.byCode.LoadOrStore(code, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	if code == CodeError || code == CodeChanged {
		r.errs.Add(1) // not a difference: the path could not be checked
	}
}
