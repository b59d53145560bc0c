package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"hlcp/internal/demo"
	"hlcp/internal/job"
)

func demoCmd() *cobra.Command {
	var cf commonFlags
	var keep bool
	var dir string
	spec := demo.DefaultSpec
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a small rsnapshot-shaped repository, copy it with hlcp, rotate it, sync the copy, and check it each time",
		Long: `Demo builds a small rsnapshot-shaped repository in a temporary directory
(snapshots daily.0..N hard-linked to each other, a symlink, a hard-linked
symlink, a sparse file, an xattr, a read-only directory), copies it with
hlcp copy showing the live progress, checks the copy and prints what it did;
then rotates the repository as one night of rsnapshot does and brings the
copy up to date with hlcp sync, and checks it again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var o job.Options
			if err := cf.apply(&o); err != nil {
				return &exitError{job.ExitUsage, err}
			}
			base := dir
			if base == "" {
				var err error
				base, err = os.MkdirTemp("", "hlcp-demo-")
				if err != nil {
					return err
				}
			}
			if !keep {
				defer func() {
					filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
						if err == nil && fi.IsDir() {
							os.Chmod(p, 0o755)
						}
						return nil
					})
					os.RemoveAll(base)
				}()
			}
			src := filepath.Join(base, "servers")
			dst := filepath.Join(base, "copy")
			fmt.Printf("building a demo repository in %s ...\n", src)
			notes, err := demo.Build(src, spec)
			if err != nil {
				return fmt.Errorf("build demo tree: %w", err)
			}
			fmt.Printf("  %d snapshots, %d paths\n", notes.Snapshots, notes.Paths)
			for _, s := range notes.Skipped {
				fmt.Printf("  skipped: %s\n", s)
			}
			fmt.Printf("\n$ hlcp copy %s %s\n", src, dst)
			o.Src, o.Dst = src, dst
			code, err := job.Copy(cmd.Context(), o)
			if err != nil {
				fmt.Fprintf(os.Stderr, "hlcp: %v\n", err)
			}
			if code != 0 {
				return &exitError{code, fmt.Errorf("demo copy failed")}
			}
			if err := verifyCopy(cmd.Context(), o); err != nil {
				return err
			}
			fmt.Printf("\nthe copy is exact: same paths, same hard-link structure, same metadata and content\n")
			// One night later: the repository rotates, and sync brings
			// the copy up to date in time set by what changed.
			edited, added, deleted, err := demo.Rotate(src, spec, 1)
			if err != nil {
				return fmt.Errorf("rotate the demo repository: %w", err)
			}
			fmt.Printf("\none night later: daily.%d dropped, daily.0..%d renamed one up, a new daily.0 linked to daily.1 with %d files edited, %d added, %d deleted\n",
				spec.Snapshots-1, spec.Snapshots-2, edited, added, deleted)
			fmt.Printf("\n$ hlcp sync %s %s\n", src, dst)
			if code, err = job.Sync(cmd.Context(), o); err != nil {
				fmt.Fprintf(os.Stderr, "hlcp: %v\n", err)
			}
			if code != 0 {
				return &exitError{code, fmt.Errorf("demo sync failed")}
			}
			if err := verifyCopy(cmd.Context(), o); err != nil {
				return err
			}
			fmt.Printf("\nthe mirror is exact again\n")
			if keep {
				fmt.Printf("\nkept: %s (source) and %s (copy)\n", src, dst)
			}
			return nil
		},
	}
	cf.add(cmd)
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the demo trees (printed at the end)")
	cmd.Flags().StringVar(&dir, "dir", "", "build the demo in this directory instead of a new temporary one")
	cmd.Flags().IntVar(&spec.Snapshots, "snapshots", spec.Snapshots, "snapshots in the demo repository")
	cmd.Flags().IntVar(&spec.Files, "files", spec.Files, "files per host per snapshot")
	return cmd
}
