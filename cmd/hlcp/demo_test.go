package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemo runs the README's first quick-start command (hlcp demo) as a
// user would, and checks that it copied, synced after a rotation, found
// both exact, and cleaned up after itself.
func TestDemo(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	r := run(t, nil, "demo", "--progress=plain")
	if r.code != 0 {
		t.Fatalf("hlcp demo: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"the copy is exact", "one night later", "$ hlcp sync ", "the mirror is exact again"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("hlcp demo printed no %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "hlcp sync ") || !strings.Contains(r.stdout, "identical") {
		t.Errorf("no sync summary or no verify result:\n%s", r.stdout)
	}
	left, _ := filepath.Glob(filepath.Join(tmp, "hlcp-demo-*"))
	if len(left) != 0 {
		t.Errorf("the demo left %v", left)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatal(err)
	}
}
