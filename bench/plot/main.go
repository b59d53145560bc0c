// Command plot draws the benchmark's scaling.png from its JSON results: wall
// time and peak RSS against the size of the tree, one line per tool. It is
// a module of its own so that the plotting library (gonum/plot and what it
// brings) stays out of hlcp's go.mod; the benchmark runs it with
// `go run` in this directory.
//
//	go run . -in ../out -out ../out/scaling.png -tools "hlcp,cp -a"
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The parts of the benchmark's results (bench/size.go) the plot reads.
type (
	measure struct {
		Wall    float64 `json:"wall_s"`
		PeakRSS int64   `json:"peak_rss_bytes"`
		Exit    int     `json:"exit"`
		Killed  bool    `json:"killed,omitempty"`
	}
	toolResult struct {
		Tool   string  `json:"tool"`
		Median measure `json:"median"`
	}
	sizeResult struct {
		Paths int64        `json:"paths"`
		Copy  []toolResult `json:"copy"`
	}
)

func main() {
	in := flag.String("in", "bench/out", "directory of the results (*.json)")
	out := flag.String("out", "", "PNG to write (default IN/scaling.png)")
	tools := flag.String("tools", "", "comma-separated tools, in the legend's order")
	flag.Parse()
	if *out == "" {
		*out = filepath.Join(*in, "scaling.png")
	}
	all, err := load(*in)
	if err == nil {
		err = plotResults(all, strings.Split(*tools, ","), *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

// load reads every size's results in dir, smallest tree first.
func load(dir string) ([]*sizeResult, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	var all []*sizeResult
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var r sizeResult
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if len(r.Copy) > 0 { // not the sync scenario's results
			all = append(all, &r)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Paths < all[j].Paths })
	return all, nil
}

// plotResults draws wall time and peak RSS against tree size (paths), one
// line per tool, into a PNG. A run killed at the time limit is drawn where
// it stood when killed, a lower bound of its time and of its peak RSS, and
// circled in black.
func plotResults(all []*sizeResult, tools []string, path string) error {
	if len(all) == 0 {
		return fmt.Errorf("no results")
	}
	mk := func(title, ylabel string, val func(measure) float64) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "paths in the tree"
		p.Y.Label.Text = ylabel
		p.X.Tick.Marker = plot.TickerFunc(func(min, max float64) []plot.Tick {
			var ts []plot.Tick
			for _, r := range all {
				ts = append(ts, plot.Tick{Value: float64(r.Paths), Label: shortCount(r.Paths)})
			}
			return ts
		})
		p.Legend.Top = true
		p.Legend.Left = true
		var args []any
		var killed plotter.XYs
		for _, name := range tools {
			var pts plotter.XYs
			for _, r := range all {
				for _, t := range r.Copy {
					if t.Tool == name && (t.Median.Exit == 0 || t.Median.Killed) {
						pts = append(pts, plotter.XY{X: float64(r.Paths), Y: val(t.Median)})
						if t.Median.Killed {
							killed = append(killed, pts[len(pts)-1])
						}
					}
				}
			}
			if len(pts) > 0 {
				args = append(args, name, pts)
			}
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return nil, err
		}
		if len(killed) > 0 {
			s, err := plotter.NewScatter(killed)
			if err != nil {
				return nil, err
			}
			s.GlyphStyle = draw.GlyphStyle{Color: color.Black, Radius: vg.Points(6), Shape: draw.RingGlyph{}}
			p.Add(s)
			p.Legend.Add("killed at the time limit (at least)", s)
		}
		p.Add(plotter.NewGrid())
		return p, nil
	}
	wall, err := mk("copy wall time (lower is better)", "seconds", func(m measure) float64 { return m.Wall })
	if err != nil {
		return err
	}
	rss, err := mk("peak RSS of the process tree (flat is bounded)", "MiB", func(m measure) float64 { return float64(m.PeakRSS) / (1 << 20) })
	if err != nil {
		return err
	}
	img := vgimg.New(vg.Points(1100), vg.Points(480))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{wall, rss}}
	canvases := plot.Align(plots, tiles, dc)
	wall.Draw(canvases[0][0])
	rss.Draw(canvases[0][1])
	w, err := os.Create(path)
	if err != nil {
		return err
	}
	defer w.Close()
	png := vgimg.PngCanvas{Canvas: img}
	_, err = png.WriteTo(w)
	return err
}

func shortCount(n int64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.0fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
