package job

import (
	"os"
	"path/filepath"
	"testing"
)

func TestInside(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(filepath.Join(src, "a"), 0o755)
	os.Symlink(src, filepath.Join(base, "alias"))
	cases := []struct {
		p    string
		want bool
	}{
		{src, true},
		{filepath.Join(src, "a"), true},
		{filepath.Join(src, "a", "new", "deeper"), true},
		{filepath.Join(base, "alias", "x"), true}, // through a symlink
		{filepath.Join(base, "other"), false},
		{base, false},
		{src + "2", false},
	}
	for _, c := range cases {
		got, err := inside(c.p, src)
		if err != nil || got != c.want {
			t.Errorf("inside(%s) = %v, %v; want %v", c.p, got, err, c.want)
		}
	}
}

func TestDstState(t *testing.T) {
	base := t.TempDir()
	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o755)
	withState := filepath.Join(base, "ws")
	os.MkdirAll(filepath.Join(withState, StateName), 0o755)
	full := filepath.Join(base, "full")
	os.MkdirAll(filepath.Join(full, "x"), 0o755)
	for _, c := range []struct {
		p             string
		exists, empty bool
		err           bool
	}{
		{filepath.Join(base, "new"), false, true, false},
		{empty, true, true, false},
		{withState, true, true, false},
		{full, true, false, false},
		{filepath.Join(base, "no", "parent"), false, false, true},
	} {
		e, m, err := dstState(c.p, StateName)
		if e != c.exists || m != c.empty || (err != nil) != c.err {
			t.Errorf("dstState(%s) = %v %v %v", c.p, e, m, err)
		}
	}
}
