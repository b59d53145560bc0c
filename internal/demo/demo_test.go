package demo

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestBuildAndCheck(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	n, err := Build(src, Spec{Snapshots: 3, Hosts: 2, Files: 20, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if n.Paths < 100 || n.Snapshots != 3 {
		t.Fatalf("notes %+v", n)
	}
	// A cp -a copy is identical; Check must say so, then find a broken link.
	dst := filepath.Join(base, "dst")
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Skipf("cp -a: %v %s", err, out)
	}
	if _, _, d, err := Check(src, dst); err != nil || len(d) > 0 {
		t.Fatalf("identical trees: %v %v", d, err)
	}
	p := filepath.Join(dst, "daily.0", "host1", "etc", "file000")
	b, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	os.Remove(p)
	os.WriteFile(p, b, fi.Mode())
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if _, _, d, _ := Check(src, dst); len(d) == 0 {
		t.Fatal("a hard link broken into two inodes was not found")
	}
}
