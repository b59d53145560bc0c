package main

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/testutil"
)

// keepTimes runs f on path p and restores p's atime and mtime afterwards, and
// its parent directory's, so that a mutation changes only what it means to.
func keepTimes(t *testing.T, p string, f func()) {
	t.Helper()
	var st, pst unix.Stat_t
	unix.Lstat(p, &st)
	parent := filepath.Dir(p)
	unix.Lstat(parent, &pst)
	f()
	if _, err := os.Lstat(p); err == nil {
		unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	}
	unix.UtimesNanoAt(unix.AT_FDCWD, parent, []unix.Timespec{pst.Atim, pst.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestVerifyFindsEachDifference copies the kitchen sink, checks that verify
// finds it identical, then injects one difference at a time into a fresh
// copy and checks that verify reports exactly that code at that path.
func TestVerifyFindsEachDifference(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	testutil.BuildKitchenSink(t, src)
	fresh := func(t *testing.T) string {
		dst := filepath.Join(t.TempDir(), "dst")
		mustCopy(t, src, dst)
		return dst
	}
	dst0 := fresh(t)
	if r := run(t, nil, "verify", "--checksum", "--progress=none", src, dst0); r.code != 0 || r.stdout == "" || strings.Contains(r.stdout, "DIFFERENT") {
		t.Fatalf("an exact copy does not verify clean: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	cases := []struct {
		name  string
		code  string
		path  string
		mut   func(t *testing.T, dst string)
		flags []string
		root  bool
	}{
		{"byte flipped, size and mtime kept", "content", "files/big-1MiB+123", func(t *testing.T, d string) {
			p := filepath.Join(d, "files/big-1MiB+123")
			keepTimes(t, p, func() {
				f, err := os.OpenFile(p, os.O_RDWR, 0)
				must(t, err)
				b := make([]byte, 1)
				f.ReadAt(b, 700000)
				b[0] ^= 0x40
				f.WriteAt(b, 700000)
				f.Close()
			})
		}, []string{"--checksum"}, false},
		{"mode bit", "mode", "links/pair-1", func(t *testing.T, d string) {
			p := filepath.Join(d, "links/pair-1")
			keepTimes(t, p, func() { must(t, os.Chmod(p, 0o640)) })
		}, nil, false},
		{"owner", "owner", "files/one-byte", func(t *testing.T, d string) {
			p := filepath.Join(d, "files/one-byte")
			keepTimes(t, p, func() { must(t, os.Lchown(p, 4242, -1)) })
		}, nil, true},
		{"mtime by 1ns", "mtime", "files/size-4095", func(t *testing.T, d string) {
			p := filepath.Join(d, "files/size-4095")
			var st unix.Stat_t
			unix.Lstat(p, &st)
			st.Mtim.Nsec = (st.Mtim.Nsec + 1) % 1e9
			must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{st.Atim, st.Mtim}, 0))
		}, nil, false},
		{"xattr value", "xattr", "xattrs/file", func(t *testing.T, d string) {
			p := filepath.Join(d, "xattrs/file")
			keepTimes(t, p, func() { must(t, unix.Lsetxattr(p, "user.hlcp.empty", []byte("now set"), 0)) })
		}, nil, false},
		{"acl", "acl", "acl/file", func(t *testing.T, d string) {
			p := filepath.Join(d, "acl/file")
			keepTimes(t, p, func() { must(t, unix.Lremovexattr(p, "system.posix_acl_access")) })
		}, nil, false},
		{"link broken into two inodes", "split", "links/trio-2", func(t *testing.T, d string) {
			p := filepath.Join(d, "links/trio-2")
			keepTimes(t, p, func() {
				b, _ := os.ReadFile(p)
				must(t, os.WriteFile(p+".tmp", b, 0o644))
				var st unix.Stat_t
				unix.Lstat(p, &st)
				os.Chmod(p+".tmp", os.FileMode(st.Mode&0o777))
				must(t, os.Rename(p+".tmp", p))
			})
		}, nil, false},
		{"two inodes joined", "joined", "files/twin-b", func(t *testing.T, d string) {
			p := filepath.Join(d, "files/twin-b")
			keepTimes(t, p, func() {
				must(t, os.Remove(p))
				must(t, os.Link(filepath.Join(d, "files/twin-a"), p))
			})
		}, nil, false},
		{"missing path", "missing", "links/pair-1", func(t *testing.T, d string) {
			p := filepath.Join(d, "links/pair-1")
			keepTimes(t, p, func() { must(t, os.Remove(p)) })
		}, nil, false},
		{"extra path", "extra", "other/new-file", func(t *testing.T, d string) {
			p := filepath.Join(d, "other/new-file")
			keepTimes(t, p, func() { must(t, os.WriteFile(p, []byte("x"), 0o644)) })
		}, nil, false},
		{"symlink retargeted", "target", "sym/relative", func(t *testing.T, d string) {
			p := filepath.Join(d, "sym/relative")
			keepTimes(t, p, func() {
				t2, _ := os.Readlink(p)
				must(t, os.Remove(p))
				must(t, os.Symlink(strings.Replace(t2, "one-byte", "one-bitE", 1), p))
			})
		}, nil, false},
		{"directory mtime", "mtime", "emptydir", func(t *testing.T, d string) {
			p := filepath.Join(d, "emptydir")
			must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Sec: 1}, {Sec: 2}}, 0))
		}, nil, false},
		{"non-UTF-8 name missing", "missing", "names/caf\xe9", func(t *testing.T, d string) {
			p := filepath.Join(d, "names/caf\xe9")
			keepTimes(t, p, func() { must(t, os.Remove(p)) })
		}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root && !isRoot() {
				t.Skip("needs root")
			}
			dst := fresh(t)
			c.mut(t, dst)
			args := append([]string{"verify", "--json", "--progress=none"}, c.flags...)
			r := run(t, nil, append(args, src, dst)...)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
			}
			var found []string
			hit := false
			for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				var d struct {
					Code, Path, Detail string
					PathBytes          []byte `json:"path_bytes"`
				}
				if err := json.Unmarshal([]byte(line), &d); err != nil {
					t.Fatalf("bad JSON line %q", line)
				}
				if d.Code == "" {
					continue // the summary
				}
				if d.PathBytes != nil {
					d.Path = string(d.PathBytes) // exact bytes of a non-UTF-8 name
				}
				found = append(found, d.Code+" "+d.Path)
				// A split or join is reported at one path of the group,
				// naming another: either may be the one mutated.
				if d.Code == c.code && (d.Path == c.path || (c.code == "split" || c.code == "joined") && strings.Contains(d.Detail, c.path)) {
					hit = true
				}
			}
			if !hit {
				t.Errorf("want %s %q, got %q", c.code, c.path, found)
			}
			for _, f := range found {
				if !strings.HasPrefix(f, c.code+" ") && !(c.code == "target" && strings.HasPrefix(f, "size ")) {
					t.Errorf("unexpected extra difference %q (want only %s)", f, c.code)
				}
			}
		})
	}
	// The content change is invisible without --checksum (same size and
	// mtime), and the text output has the code in the first column.
	dst := fresh(t)
	cases[0].mut(t, dst)
	if r := run(t, nil, "verify", "--progress=none", src, dst); r.code != 0 {
		t.Errorf("without --checksum a same-size same-mtime change is not visible; exit %d\n%s", r.code, r.stdout)
	}
	r := run(t, nil, "verify", "-c", "--progress=none", src, dst)
	if r.code != 1 || !strings.HasPrefix(r.stdout, "content  files/big-1MiB+123  (") {
		t.Errorf("text output: exit %d\n%s", r.code, r.stdout)
	}
}

// TestVerifyAgreesWithOracle builds random small trees, copies them, applies
// random mutations and checks that hlcp verify's verdict, and the set of
// paths it names, agree with the independent oracle's.
func TestVerifyAgreesWithOracle(t *testing.T) {
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	for round := 0; round < rounds; round++ {
		t.Run(fmt.Sprint("seed=", round), func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(round)))
			base := t.TempDir()
			src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
			os.Mkdir(src, 0o755)
			testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 2 + rng.Intn(3), Files: 30 + rng.Intn(60), DirsPerLevel: 2, Depth: 2, ChangeRate: 0.2, Seed: int64(round), MaxSize: 3000})
			mustCopy(t, src, dst)
			var files []string
			filepath.Walk(dst, func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode().IsRegular() {
					files = append(files, p)
				}
				return nil
			})
			sort.Strings(files)
			n := rng.Intn(4) // 0 mutations: must agree on "identical"
			for i := 0; i < n; i++ {
				p := files[rng.Intn(len(files))]
				if _, err := os.Lstat(p); err != nil {
					continue
				}
				switch rng.Intn(5) {
				case 0:
					keepTimes(t, p, func() { os.Chmod(p, 0o600) })
				case 1:
					keepTimes(t, p, func() { os.Remove(p) })
				case 2:
					keepTimes(t, p, func() {
						b, _ := os.ReadFile(p)
						os.Remove(p)
						os.WriteFile(p, b, 0o644)
					})
				case 3:
					var st unix.Stat_t
					unix.Lstat(p, &st)
					unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{st.Atim, {Sec: st.Mtim.Sec + 1, Nsec: st.Mtim.Nsec}}, 0)
				case 4:
					q := files[rng.Intn(len(files))]
					if q != p {
						keepTimes(t, p, func() { os.Remove(p); os.Link(q, p) })
					}
				}
			}
			opts := testutil.CompareOptions{Owner: isRoot(), Xattrs: true, Content: true}
			a, err := testutil.Snapshot(src, opts)
			must(t, err)
			b, err := testutil.Snapshot(dst, opts)
			must(t, err)
			oracle := testutil.Diff(a, b, opts)
			r := run(t, nil, "verify", "-c", "--json", "--progress=none", src, dst)
			if (len(oracle) == 0) != (r.code == 0) {
				t.Fatalf("verdicts disagree: oracle %d differences %v, hlcp verify exit %d:\n%s", len(oracle), oracle, r.code, r.stdout)
			}
			// Every path the oracle names (first path of a message) must
			// appear in hlcp verify's report, or another path of its inode:
			// verify reports an inode's metadata once, at its first path.
			report := r.stdout
			byInode := map[[2]uint64][]string{}
			for _, p := range a.Paths() {
				if e := a.Get(p); !e.IsDir() {
					byInode[[2]uint64{e.Dev, e.Ino}] = append(byInode[[2]uint64{e.Dev, e.Ino}], p)
				}
			}
			for _, d := range oracle {
				var p string
				switch f := strings.Fields(d); {
				case strings.HasPrefix(d, "only in "):
					p = d[strings.Index(d, ": ")+2:]
				case strings.HasPrefix(d, "links:") || len(f) < 2:
					continue // checked through the verdict and the join/split codes
				default:
					p = strings.TrimSuffix(f[1], ":")
				}
				names := []string{p}
				if e := a.Get(p); e != nil && !e.IsDir() {
					names = byInode[[2]uint64{e.Dev, e.Ino}]
				}
				named := false
				for _, n := range names {
					named = named || strings.Contains(report, `"path":"`+n+`"`)
				}
				if !named {
					t.Errorf("oracle reports %q; hlcp verify names neither %s nor another path of its inode:\n%s", d, p, report)
				}
			}
		})
	}
}

// TestCopyVerify: copy --verify copies, then proves the copy with verify
// --checksum; a JSON run keeps stdout machine-readable.
func TestCopyVerify(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 3, Files: 40, DirsPerLevel: 2, Depth: 2, ChangeRate: 0.2, Seed: 7, MaxSize: 5000})
	r := run(t, nil, "copy", "--verify", "--progress=none", src, filepath.Join(base, "dst"))
	if r.code != 0 || !strings.Contains(r.stdout, "identical") || !strings.Contains(r.stdout, "inodes hashed") {
		t.Fatalf("copy --verify: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	r = run(t, nil, "copy", "--verify", "--progress=json", src, filepath.Join(base, "dst2"))
	if r.code != 0 {
		t.Fatalf("copy --verify --progress=json: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("stdout line is not JSON: %q", l)
		}
	}
}

// TestVerifyArguments: --sample 100 compares every inode's content; the
// temporary directory may not be inside a tree; messages name the right
// argument; verify leaves the trees' directory atimes alone.
func TestVerifyArguments(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	for _, d := range []string{src, dst} {
		must(t, os.MkdirAll(filepath.Join(d, "sub"), 0o755))
	}
	must(t, os.WriteFile(filepath.Join(src, "sub/f"), []byte("hello"), 0o644))
	must(t, os.WriteFile(filepath.Join(dst, "sub/f"), []byte("jello"), 0o644))
	old := unix.Timespec{Sec: 1577836800} // 2020-01-01
	for _, p := range []string{src, dst, filepath.Join(src, "sub"), filepath.Join(dst, "sub")} {
		if p != src && p != dst {
			must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(p, "f"), []unix.Timespec{old, old}, 0))
		}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{old, old}, 0))
	}
	r := run(t, nil, "verify", "--sample", "100", "--progress=none", src, dst)
	if r.code != 1 || !strings.Contains(r.stdout, "content  sub/f") {
		t.Errorf("--sample 100: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if isRoot() { // O_NOATIME needs ownership or CAP_FOWNER
		for _, p := range []string{src, dst, filepath.Join(src, "sub"), filepath.Join(dst, "sub")} {
			var st unix.Stat_t
			must(t, unix.Lstat(p, &st))
			if st.Atim != old {
				t.Errorf("verify changed the atime of %s", p)
			}
		}
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"tmp inside src", []string{"--tmp", filepath.Join(src, "sub"), src, dst}, "inside SRC"},
		{"tmp is dst", []string{"--tmp", dst, src, dst}, "inside DST"},
		{"dst missing", []string{src, filepath.Join(base, "nope")}, "DST " + filepath.Join(base, "nope") + " does not exist"},
		{"bad sample", []string{"--sample", "NaN", src, dst}, "--sample"},
	} {
		r := run(t, nil, append([]string{"verify"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and %q", c.name, r.code, r.stderr, c.want)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(src, "sub")); len(ents) != 1 {
		t.Errorf("verify wrote into SRC: %v", ents)
	}
}

// TestCopyIntoEmptyDstWithDefaultACL: an existing empty DST whose default
// ACL would be inherited by everything created in it still becomes an
// exact copy.
func TestCopyIntoEmptyDstWithDefaultACL(t *testing.T) {
	if _, err := exec.LookPath("setfacl"); err != nil {
		t.Skip("setfacl is not installed (CI installs acl)")
	}
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	os.Mkdir(src, 0o755)
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 2, Files: 20, DirsPerLevel: 2, Depth: 1, ChangeRate: 0.2, Seed: 3, MaxSize: 1000})
	os.Mkdir(dst, 0o755)
	if out, err := exec.Command("setfacl", "-d", "-m", "u:65534:rwx", dst).CombinedOutput(); err != nil {
		t.Skipf("setfacl on %s: %v %s (no ACL support here)", dst, err, out)
	}
	mustCopy(t, src, dst)
	if r := run(t, nil, "verify", "--progress=none", src, dst); r.code != 0 {
		t.Errorf("verify after copying into a DST with a default ACL: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
