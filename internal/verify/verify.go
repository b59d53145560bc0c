// Package verify is `hlcp verify`'s consumer of the differ
// (internal/differ): it prints every difference as one grep-able line, or
// as one JSON object, in the order the differ hands them over (path
// order), and counts them. Deciding what the differences mean for the exit
// code and the summary stays with the command (internal/job).
package verify

import (
	"encoding/json"
	"fmt"
	"hlcp/internal/msg"
	"io"

	"hlcp/internal/differ"
)

// Format is the one-line form of a difference: the code in a fixed
// column, the path (quoted when it is not printable, or has a space), the
// details.
func Format(d differ.Diff) string {
	s := fmt.Sprintf("%-8s %s", d.Code, msg.Quote(d.Path))
	if d.Detail != "" {
		s += "  (" + d.Detail + ")"
	}
	return s
}

// Printer is a differ.Consumer that writes each difference to W: a line
// (Format), or with JSON a JSON object (see differ.Diff.MarshalJSON).
type Printer struct {
	W     io.Writer
	JSON  bool
	Shown int64
	enc   *json.Encoder
}

// Difference prints d.
func (p *Printer) Difference(d differ.Diff) error {
	p.Shown++
	if p.JSON {
		if p.enc == nil {
			p.enc = json.NewEncoder(p.W)
		}
		return p.enc.Encode(d)
	}
	_, err := fmt.Fprintln(p.W, Format(d))
	return err
}
