package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Minimum image sizes (MiB) that mkfs accepts.
var minImageMB = map[string]int{"xfs": 300, "btrfs": 114}

// MountImage creates a sizeMB sparse image file of fstype ("ext4", "xfs",
// "btrfs", "vfat", or anything with a mkfs.<fstype>) in a temp dir, mkfs's
// it (extra mkfsArgs are passed before the image name, e.g. "-N", "200000"
// for ext4), attaches it to a free loop device (losetup -f --show) and
// mounts it. It returns the mount point; unmount (lazy as a fallback), loop
// detach and removal are registered with t.Cleanup. sizeMB below the
// filesystem's minimum (xfs 300, btrfs 114) is raised to it.
//
// The ext4 lost+found directory is removed so that the mount point starts
// empty. The test is skipped when not root, when mkfs.<fstype> or losetup is
// not installed, when no loop device is free and when mount fails (e.g. the
// kernel lacks the filesystem); a failing mkfs fails the test.
func MountImage(t testing.TB, fstype string, sizeMB int, mkfsArgs ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to loop-mount %s images", fstype)
	}
	mkfs, err := exec.LookPath("mkfs." + fstype)
	if err != nil {
		t.Skipf("mkfs.%s not installed", fstype)
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not installed")
	}
	if m := minImageMB[fstype]; sizeMB < m {
		sizeMB = m
	}

	tmp := t.TempDir()
	img := filepath.Join(tmp, fstype+".img")
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMB) << 20); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()

	var args []string
	switch fstype {
	case "ext2", "ext3", "ext4":
		args = []string{"-F", "-q"}
	case "xfs", "btrfs":
		args = []string{"-f", "-q"}
	}
	args = append(append(args, mkfsArgs...), img)
	if out, err := exec.Command(mkfs, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s %s: %v\n%s", fstype, strings.Join(args, " "), err, out)
	}

	// Attach a loop device. losetup -f can race with other processes
	// grabbing the same device; retry a few times.
	var dev string
	var lastErr string
	for attempt := 0; attempt < 5; attempt++ {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(losetup, "-f", "--show", img)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err == nil {
			dev = strings.TrimSpace(stdout.String())
			break
		} else {
			lastErr = fmt.Sprintf("%v: %s", err, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	if dev == "" {
		t.Skipf("no free loop device for the %s image (losetup -f --show): %s", fstype, lastErr)
	}
	detach := func() {
		// On a still-busy device (after a lazy unmount) this sets autoclear
		// so the kernel detaches it once the last user is gone.
		_ = exec.Command(losetup, "-d", dev).Run()
	}

	if out, err := exec.Command("mount", "-t", fstype, dev, mnt).CombinedOutput(); err != nil {
		// A kernel without the filesystem: its FUSE driver, if installed
		// (exfat-fuse, fusefat), serves the same on-disk format.
		name, fargs := "mount."+fstype+"-fuse", []string{dev, mnt}
		if fstype == "vfat" {
			name, fargs = "fusefat", []string{"-o", "rw+", dev, mnt}
		}
		fuse, ferr := exec.LookPath(name)
		if ferr != nil {
			detach()
			t.Skipf("mount failed: mount -t %s %s: %v: %s (and no %s)", fstype, dev, err, strings.TrimSpace(string(out)), name)
		}
		if out2, err2 := exec.Command(fuse, fargs...).CombinedOutput(); err2 != nil {
			detach()
			t.Skipf("mount failed: mount -t %s %s: %v: %s; %s: %v: %s", fstype, dev, err, strings.TrimSpace(string(out)), fuse, err2, strings.TrimSpace(string(out2)))
		}
		t.Logf("the kernel has no %s: mounted with %s", fstype, fuse)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s; falling back to lazy unmount", mnt, err, strings.TrimSpace(string(out)))
			if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount -l %s: %v: %s", mnt, err, strings.TrimSpace(string(out)))
			}
		}
		detach()
		// t.TempDir's own cleanup (registered earlier, so run later)
		// removes the image and the mount point.
	})
	if fstype == "ext2" || fstype == "ext3" || fstype == "ext4" {
		_ = os.Remove(filepath.Join(mnt, "lost+found"))
	}
	return mnt
}
