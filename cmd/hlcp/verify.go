package main

import (
	"github.com/spf13/cobra"

	"hlcp/internal/differ"
	"hlcp/internal/job"
)

func verifyCmd() *cobra.Command {
	var cf commonFlags
	var o job.VerifyOptions
	var noOwner, noPerms, noTimes, noXattrs, noACLs, atime bool
	cmd := &cobra.Command{
		Use:   "verify [flags] SRC DST",
		Short: "Prove that DST is an exact copy of SRC (paths, metadata, hard links, content)",
		Long: `Verify compares the trees SRC and DST and reports every difference, one line
each, in path order:

  missing  PATH   only in SRC            extra    PATH   only in DST
  type     PATH   file vs symlink...     mode     PATH   permission bits
  owner    PATH   uid:gid                size     PATH
  mtime    PATH   nanosecond mtime       atime    PATH   (with --atime)
  target   PATH   symlink text           rdev     PATH   device numbers
  xattr    PATH   an xattr differs       acl      PATH   a POSIX ACL differs
  content  PATH   same size, other data (with --checksum or --sample)
  split    PATH   shares an inode in SRC with another path, not in DST
  joined   PATH   shares an inode in DST with another path, not in SRC
  changed  PATH   changed while being verified
  error    PATH   could not be checked

Names that are not printable are quoted. Memory stays within --memory: both
trees' records are sorted on disk and merge-joined, and the hard-link
structure is proven by sorting (source inode, destination inode) pairs both
ways. Content is read once per inode, however many paths it has. Verify never
writes to SRC or DST (its temporary files go to --tmp).

Exit codes: 0 identical, 1 different, 3 no difference found but some paths
could not be checked (errors, or files that changed while being verified),
2 bad arguments, 4 verification stopped (a tree's root unreadable, I/O error
on the temporary files).`,
		Example: `  hlcp verify /backups/rsnapshot /mnt/new/rsnapshot
  hlcp verify --checksum --hash=sha256 /backups/rsnapshot /mnt/new/rsnapshot
  hlcp verify --sample 5 --json SRC DST > report.jsonl`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cf.apply(&o.Options); err != nil {
				return &exitError{job.ExitUsage, err}
			}
			if !(o.Verify.Sample >= 0 && o.Verify.Sample <= 100) { // NaN too
				return &exitError{job.ExitUsage, errorf("--sample must be a percentage (0-100)")}
			}
			o.Verify.What = differ.What{Perms: !noPerms, Owner: !noOwner, Times: !noTimes, Atime: atime, Xattrs: !noXattrs, ACLs: !noACLs}
			o.Src, o.Dst = args[0], args[1]
			code, err := job.Verify(cmd.Context(), o)
			if code != 0 || err != nil {
				return &exitError{code, err}
			}
			return nil
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.BoolVarP(&o.Verify.Checksum, "checksum", "c", false, "compare the content of every inode (read once per inode on each side)")
	f.Float64Var(&o.Verify.Sample, "sample", 0, "compare the content of a random `P` percent of inodes (a quick check)")
	f.StringVar(&o.Verify.Hash, "hash", "fast", "content hash: fast (non-cryptographic) or sha256")
	f.BoolVar(&o.JSON, "json", false, "print differences and the summary as JSON lines")
	f.StringVar(&o.Verify.TmpDir, "tmp", "", "directory for temporary sort files (default $TMPDIR or /tmp)")
	f.BoolVarP(&o.Verify.OneFileSystem, "one-file-system", "x", false, "do not descend into mount points")
	f.BoolVar(&noOwner, "no-owner", false, "do not compare uid/gid")
	f.BoolVar(&noPerms, "no-perms", false, "do not compare permission bits")
	f.BoolVar(&noTimes, "no-times", false, "do not compare mtimes")
	f.BoolVar(&noXattrs, "no-xattrs", false, "do not compare xattrs (other than ACLs)")
	f.BoolVar(&noACLs, "no-acls", false, "do not compare POSIX ACLs")
	f.BoolVar(&atime, "atime", false, "also compare atimes of non-directories")
	return cmd
}
