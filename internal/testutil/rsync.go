package testutil

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RsyncItemize runs
//
//	rsync -naHAXc --delete --numeric-ids --itemize-changes SRC/ DST/
//
// and returns its non-empty output lines, each describing one change rsync
// would make to turn DST into SRC. It skips the test if rsync is not
// installed and fails it if rsync exits non-zero (23/24, partial transfer,
// are reported with rsync's stderr). Run with LC_ALL=C so that rsync escapes
// non-printable bytes in names (e.g. "\#012" for a newline) instead of
// printing raw bytes.
//
// Findings (rsync 3.5.0, protocol 32, checked by this package's tests):
//   - On identical trees rsync prints nothing at all, also for the top
//     directory "./", hard-linked files and symlinks, devices, fifos,
//     sockets, xattrs (user, trusted, security.capability) and ACLs, so no
//     filtering is needed: an exact copy yields an empty slice. "./" only
//     shows up when the top directory differs, e.g. ".d..t...... ./" for its
//     mtime (so a copier that does not preserve the root directory's
//     metadata yields exactly that line).
//   - Typical lines: ".f...p..... P" (permissions), ".f....o.... P" (owner),
//     ".f..t...... P" (mtime), ">fc........ P" (content), ".f........x P"
//     (xattrs), ".f.......a. P" (ACL), ".L..t...... P -> T" (symlink time),
//     ".d..t...... D/" (directory time), "*deleting   P" (extra path in DST),
//     "hf          B => A" / "hL          B => A" (B should be a hard link of
//     the file / symlink A but is not). Non-printable bytes are escaped,
//     e.g. "names/line\#012break".
//   - Blind spots, where the oracle (Diff) is the authority: rsync compares
//     mtimes in whole seconds only (1 ns, 1 µs and 1 ms changes are not
//     reported), never compares atimes, and does not report two DST paths
//     that share an inode which are separate inodes in SRC.
//   - rsync refuses paths longer than PATH_MAX ("filename overflows max-path
//     len", exit 23), so it cannot check BuildKitchenSink's deep/ chain:
//     remove deep/ on both sides first (os.RemoveAll copes with any depth).
//   - Because of -c, rsync reads every regular file of both trees without
//     O_NOATIME; under relatime this bumps atimes that are older than
//     mtime/ctime or than a day. Compare atimes (CompareTrees with Atime)
//     before calling RsyncItemize, not after.
func RsyncItemize(t testing.TB, src, dst string) []string {
	t.Helper()
	rsync, err := exec.LookPath("rsync")
	if err != nil {
		t.Skip("rsync not installed: skipping the rsync cross-check")
	}
	cmd := exec.Command(rsync, "-naHAXc", "--delete", "--numeric-ids", "--itemize-changes",
		withSlash(src), withSlash(dst))
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && (ee.ExitCode() == 23 || ee.ExitCode() == 24) {
			t.Fatalf("rsync -n %s %s: partial transfer (exit %d): %s\nstdout:\n%s",
				src, dst, ee.ExitCode(), strings.TrimSpace(stderr.String()), stdout.String())
		}
		t.Fatalf("rsync -n %s %s: %v: %s", src, dst, err, strings.TrimSpace(stderr.String()))
	}
	var lines []string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func withSlash(p string) string {
	if strings.HasSuffix(p, "/") {
		return p
	}
	return p + "/"
}
