// Package budget owns the division of the process's memory: --memory (one
// Budget) is handed out in named shares, each sized here with the reason
// for its size beside it, so that no stage divides the budget by hand and a
// new buffer has to take its share from this table. It also sizes what the
// open-file limit allows (the directory caches, prefetched files), since
// an open directory fd costs a cache entry's memory too.
//
// The shares are upper bounds: what grows with the tree lives on disk, and
// what stays in RAM is these fixed pieces. At the 128 MiB default:
//
//	share                 copy, move            verify
//	scan sort buffers     2 MiB + 0.5 MiB       2 x (25.6 + 4 MiB)
//	plan merge / links    2 MiB + 1 MiB         -
//	directory names       1 MiB                 1 MiB per tree
//	directory caches      2 MiB (2 caches)      2 MiB (2 caches)
//	path join / pairs     -                     8 MiB merge, 2 x 25.6 MiB sorts
//	report                -                     8 MiB sort, 32 MiB merge
//
// The copy's own working set beside them (workers' tasks, O_DIRECT
// windows, io_uring rings, the runtime) is fixed: a few MiB.
package budget

import "golang.org/x/sys/unix"

// Default is the budget when --memory is not given.
const Default = 128 << 20

// Min is the smallest budget accepted: the fixed working set and the
// smallest sort buffers need about this much.
const Min = 32 << 20

// Budget is the memory the whole process may use, in bytes.
type Budget int64

// Or returns b, or Default when b is not set.
func (b Budget) Or() Budget {
	if b <= 0 {
		return Default
	}
	return b
}

func (b Budget) share(div int64) int64 { return int64(b.Or()) / div }

// --- copy and move ---

// ScanEntries is the scan's sort of the entry records. A 64th (2 MiB by
// default): bigger buffers only make fewer, longer runs; the merge takes
// up to 64 runs a pass, and a 10M-path tree's sort phase took 4 s of its 3
// minutes with twice this. The scan and the sort then stay below the copy
// phase's working set, so the process's peak does not grow with the tree.
func (b Budget) ScanEntries() int { return int(b.share(64)) }

// ScanDirs is the scan's sort of the directory records: a quarter of
// ScanEntries (directories are about 2% of the paths).
func (b Budget) ScanDirs() int { return int(b.share(256)) }

// PlanMerge is the merge of the entry runs into the plan, and of the
// directory runs into the directory table; the link sort beside it takes
// half as much again (see plan.Build).
func (b Budget) PlanMerge() int { return int(b.share(64)) }

// DirNames is the directory table's parents and names held in RAM, so
// that the directory caches' lookups cost no syscall: a 128th (1 MiB,
// some 60,000 directories). A larger table is read from disk, two preads
// a lookup.
func (b Budget) DirNames() int64 { return b.share(128) }

// DirCaches is what the two directory caches' entries (source and
// destination sides) may take together: a 64th (2 MiB, 8,192 directories
// each at DirCacheEntryBytes).
func (b Budget) DirCaches() int64 { return b.share(64) }

// --- verify ---

// VerifyPaths is each tree's sort of its path records in verify, and each
// of the two sorts of inode pairs: a fifth. The two trees are scanned at
// once (two sorts), then the pairs sorted (two more), never all four.
func (b Budget) VerifyPaths() int { return int(b.share(5)) }

// VerifyDirs is each tree's sort of its directory records in verify.
func (b Budget) VerifyDirs() int { return int(b.share(32)) }

// VerifyDirTable is the merge into each tree's directory table.
func (b Budget) VerifyDirTable() int { return int(b.share(8)) }

// VerifyJoin is each tree's merge in the join by path (two at once).
func (b Budget) VerifyJoin() int { return int(b.share(16)) }

// VerifyDiffs is the sort of the differences (so that they come out in
// path order): they are few in a good copy.
func (b Budget) VerifyDiffs() int { return int(b.share(16)) }

// VerifyMerge is a merge of the pairs or of the differences, one at a
// time.
func (b Budget) VerifyMerge() int { return int(b.share(4)) }

// --- directory caches and the open-file limit ---

// DirCacheEntryBytes is the heap a DirCache entry takes (the entry and
// its share of the map), rounded up; fsx's TestDirCacheEntryBytes
// measures it.
const DirCacheEntryBytes = 128

// DirCacheMemEntries is how many entries each of n caches may hold within
// mem for them all.
func DirCacheMemEntries(n int, mem int64) int64 {
	return mem / int64(n) / DirCacheEntryBytes
}

// DirCacheSize is a capacity for one of n directory caches of a process:
// a share of the open-file limit (which Go raises to the hard limit, and
// fsx.RaiseFileLimit beyond it for root), kept between 256 and 262144 fds,
// and no more entries than mem holds for all n caches (mem <= 0: no memory
// bound). Without the memory bound a tree with many directories on a
// system with a high file limit would hold a cache entry, and an open
// file, per directory.
func DirCacheSize(n int, mem int64) int {
	c := int64(1024)
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err == nil {
		c = (int64(r.Cur) - 512) / int64(2*n)
	}
	if mem > 0 {
		c = min(c, DirCacheMemEntries(n, mem))
	}
	return int(min(max(c, 256), 1<<18))
}

// FileLimitFor is the open-file limit that lets two directory caches of
// this budget hold every one of dirs directories (DirCacheSize gives each
// of 2 caches a quarter of the limit), at most 1M.
func (b Budget) FileLimitFor(dirs uint32) uint64 {
	perCache := min(uint64(dirs), uint64(DirCacheMemEntries(2, b.DirCaches())))
	return min(4*perCache+1024, 1<<20)
}

// PrefetchFds is how many prefetched source files may be open at once:
// what the open-file limit leaves beside the two directory caches (which
// take at most half of it) and some room, at most 4096.
func PrefetchFds() int64 {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) != nil {
		return 0
	}
	return min(max((int64(r.Cur)-512)/2-256, 0), 4096)
}
