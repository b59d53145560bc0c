package job

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/journal"
)

// TestOpenJobRefusals runs Copy up to openJob's decision on states that
// must be refused before anything is copied, and checks the exit code and
// that the state is left as it was. Two known bugs are logged, not failed
// (see the report): a refusal that creates DST, and a crash leftover of
// Create that is taken for a foreign directory.
func TestOpenJobRefusals(t *testing.T) {
	cases := []struct {
		name string
		// setup makes the state; it returns the options and the paths
		// that must be unchanged.
		setup func(t *testing.T, base, src, dst string) Options
		want  string
		// dstMustStayMissing: DST did not exist; a refusal must not
		// create it.
		dstMustStayMissing bool
	}{
		{
			name: "a --state job whose DST is gone",
			setup: func(t *testing.T, base, src, dst string) Options {
				state := filepath.Join(base, "state")
				fd, _ := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				defer unix.Close(fd)
				var st unix.Stat_t
				unix.Stat(src, &st)
				j, err := journal.Create(journal.Place{Parent: fd, Name: "state", Path: state},
					journal.Identity{Command: "copy", Src: src, Dst: dst, SrcDev: st.Dev, SrcIno: st.Ino, DstDev: 1, DstIno: 1, Options: "one-file-system=false"})
				if err != nil {
					t.Fatal(err)
				}
				j.Close()
				return Options{Src: src, Dst: dst, State: state}
			},
			want:               "which does not exist",
			dstMustStayMissing: true,
		},
		{
			name: "a move that removed sources, restarted",
			setup: func(t *testing.T, base, src, dst string) Options {
				os.Mkdir(dst, 0o755)
				fd, _ := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				defer unix.Close(fd)
				j, err := journal.Create(journal.Place{Parent: fd, Name: StateName, Path: filepath.Join(dst, StateName), InDst: true},
					journal.Identity{Command: "move", Src: src, Dst: dst})
				if err != nil {
					t.Fatal(err)
				}
				j.MarkMoved()
				j.Close()
				return Options{Src: src, Dst: dst, Move: true, Restart: true}
			},
			want: "--restart --discard-moved-data",
		},
		{
			name: "a copy over a damaged move state",
			setup: func(t *testing.T, base, src, dst string) Options {
				os.Mkdir(dst, 0o755)
				fd, _ := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				defer unix.Close(fd)
				j, err := journal.Create(journal.Place{Parent: fd, Name: StateName, Path: filepath.Join(dst, StateName), InDst: true},
					journal.Identity{Command: "move", Src: src, Dst: dst})
				if err != nil {
					t.Fatal(err)
				}
				j.Close()
				os.Truncate(filepath.Join(dst, StateName, "state.json"), 100)
				return Options{Src: src, Dst: dst, Restart: true}
			},
			want: "--restart --discard-moved-data",
		},
		{
			name: "a state directory others can write",
			setup: func(t *testing.T, base, src, dst string) Options {
				os.MkdirAll(filepath.Join(dst, StateName), 0o755)
				os.Chmod(filepath.Join(dst, StateName), 0o777)
				return Options{Src: src, Dst: dst, Restart: true, DiscardMoved: true}
			},
			want: "refusing the state directory",
		},
		{
			name: "a crash inside Create left only the temporary marker",
			setup: func(t *testing.T, base, src, dst string) Options {
				os.MkdirAll(filepath.Join(dst, StateName), 0o700)
				os.WriteFile(filepath.Join(dst, StateName, "hlcp-job.tmp"), nil, 0o600)
				return Options{Src: src, Dst: dst}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
			os.Mkdir(src, 0o755)
			os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
			o := c.setup(t, base, src, dst)
			o.Quiet, o.Stdout, o.Stderr = true, io.Discard, io.Discard
			before := treeOf(t, base)
			code, err := Copy(context.Background(), o)
			if c.want == "" {
				// Not a refusal case in itself: only the known bug.
				if code != ExitOK {
					t.Errorf("Copy: %d %v, want the job to run", code, err)
				}
				return
			}
			if code != ExitUsage || !isUsage(err) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Copy: %d %v, want a refusal with %q", code, err, c.want)
			}
			after := treeOf(t, base)
			if c.dstMustStayMissing {
				if _, err := os.Lstat(dst); err == nil {
					t.Errorf("the refusal created DST")
				}
			}
			if after != before {
				t.Errorf("a refusal changed the trees:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// treeOf lists the paths below root with their types and sizes.
func treeOf(t *testing.T, root string) string {
	var b strings.Builder
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			rel, _ := filepath.Rel(root, p)
			b.WriteString(rel + " " + fi.Mode().String() + "\n")
		}
		return nil
	})
	return b.String()
}
