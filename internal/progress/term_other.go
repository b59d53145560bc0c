//go:build !linux

package progress

// isTerminal is conservative off Linux: progress falls back to Plain.
func isTerminal(fd int) bool { return false }

// termWidth is unknown off Linux; the default width is used.
func termWidth(fd int) int { return 0 }
