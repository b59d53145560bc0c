package budget

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestShares: the shares at the default budget are the sizes the README's
// Memory table gives, they scale with the budget, and an unset budget is
// the default.
func TestShares(t *testing.T) {
	for _, c := range []struct {
		name string
		got  int64
		want int64
	}{
		{"scan entries", int64(Budget(0).ScanEntries()), 2 << 20},
		{"scan dirs", int64(Budget(0).ScanDirs()), 512 << 10},
		{"plan merge", int64(Budget(0).PlanMerge()), 2 << 20},
		{"dir names", Budget(0).DirNames(), 1 << 20},
		{"dir caches", Budget(0).DirCaches(), 2 << 20},
		{"verify paths", int64(Budget(0).VerifyPaths()), (128 << 20) / 5},
		{"verify merge", int64(Budget(0).VerifyMerge()), 32 << 20},
		{"scaled", int64(Budget(1 << 30).ScanEntries()), 16 << 20},
		{"negative is unset", int64(Budget(-5).PlanMerge()), 2 << 20},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
	// The copy's sort and cache shares together stay a small part of the
	// budget, so that the process's peak is set by its fixed working set.
	b := Budget(Default)
	sum := int64(b.ScanEntries()+b.ScanDirs()+b.PlanMerge()+b.PlanMerge()/2) + b.DirNames() + b.DirCaches()
	if sum > Default/8 {
		t.Errorf("the copy's shares take %d of %d", sum, Default)
	}
}

// TestDirCacheSize: bounded by the file limit (a quarter each for two
// caches, less room), by memory, and kept between 256 and 262144.
func TestDirCacheSize(t *testing.T) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	byFds := min(max((int64(r.Cur)-512)/4, 256), 1<<18)
	for _, c := range []struct {
		mem  int64
		want int64
	}{
		{0, byFds},
		{1 << 20, min(byFds, max(1<<20/2/DirCacheEntryBytes, 256))},
		{1, 256},
		{1 << 40, byFds},
	} {
		if got := int64(DirCacheSize(2, c.mem)); got != c.want {
			t.Errorf("DirCacheSize(2, %d) = %d, want %d", c.mem, got, c.want)
		}
	}
	if got := Budget(Default).FileLimitFor(10); got != 4*10+1024 {
		t.Errorf("FileLimitFor(10) = %d", got)
	}
	if got := Budget(Default).FileLimitFor(1 << 30); got != 4*uint64(DirCacheMemEntries(2, Budget(Default).DirCaches()))+1024 {
		t.Errorf("FileLimitFor(1<<30) = %d: not bounded by the caches' memory", got)
	}
	if n := PrefetchFds(); n < 0 || n > 4096 {
		t.Errorf("PrefetchFds() = %d", n)
	}
}
