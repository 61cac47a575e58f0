package main

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	colNone    = color.RGBA{R: 150, G: 150, B: 150, A: 255}
	colBridge  = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colCniplug = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	colPodman  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	colAsync   = color.RGBA{R: 148, G: 103, B: 189, A: 255}
	colDirect  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	colDocker  = color.RGBA{R: 140, G: 86, B: 75, A: 255}
	colWarm    = color.RGBA{R: 227, G: 119, B: 194, A: 255}
)

// chart draws the lifecycle wall times and the throughput side by side.
func (r *results) chart(path string) error {
	left, err := lifecyclePlot(r.lifecycleBars())
	if err != nil {
		return err
	}
	right, err := r.throughputPlot()
	if err != nil {
		return err
	}
	return writeSideBySide(path, left, right)
}

// chartBar is one bar of the lifecycle plot.
type chartBar struct {
	label string
	value float64
	col   color.Color
}

// lifecycleBars are the p50 wall times of the kinds measured, top to bottom in reading order.
func (r *results) lifecycleBars() []chartBar {
	bars := []chartBar{
		{"run --rm: none", r.RunRM["none"].p50(), colNone},
		{"run --rm: Docker bridge", r.RunRM["bridge"].p50(), colBridge},
		{"run --rm: cniplug", r.RunRM["cniplug"].p50(), colCniplug},
		{"run --rm: cniplug sync DEL", r.RunRM[kindSync].p50(), colAsync},
		{"run --rm: cniplug direct-join", r.RunRM[kindDirect].p50(), colDirect},
		{"run --rm: cniplug Docker IPAM + direct-join", r.RunRM[kindDockerDirect].p50(), colDocker},
		{"run --rm: cniplug warm pool + direct-join", r.RunRM[kindWarm].p50(), colWarm},
		{"run -d + rm -f: none", r.Pair["none"].p50(), colNone},
		{"run -d + rm -f: Docker bridge", r.Pair["bridge"].p50(), colBridge},
		{"run -d + rm -f: cniplug", r.Pair["cniplug"].p50(), colCniplug},
		{"run -d + rm -f: cniplug sync DEL", r.Pair[kindSync].p50(), colAsync},
		{"run -d + rm -f: cniplug direct-join", r.Pair[kindDirect].p50(), colDirect},
		{"run -d + rm -f: cniplug Docker IPAM + direct-join", r.Pair[kindDockerDirect].p50(), colDocker},
		{"run -d + rm -f: cniplug warm pool + direct-join", r.Pair[kindWarm].p50(), colWarm},
	}
	if p := r.Podman; p != nil && p.Error == "" {
		bars = append(bars, chartBar{"podman run --rm: none", p.None.p50(), colNone}, chartBar{"podman run --rm: CNI", p.CNI.p50(), colPodman})
	}
	// Kinds not measured (the async-delete one in older results.json) get no bar.
	kept := bars[:0]
	for _, b := range bars {
		if !math.IsNaN(b.value) {
			kept = append(kept, b)
		}
	}
	bars = kept
	// Top to bottom in reading order.
	for i, j := 0, len(bars)-1; i < j; i, j = i+1, j-1 {
		bars[i], bars[j] = bars[j], bars[i]
	}
	return bars
}

// lifecyclePlot draws the bars horizontally, each labelled with its value.
func lifecyclePlot(bars []chartBar) (*plot.Plot, error) {
	left := plot.New()
	left.Title.Text = "Container lifecycle, p50 wall time"
	left.X.Label.Text = "seconds"
	left.X.Min = 0
	var labels []string
	maxV := 0.0
	for _, b := range bars {
		maxV = math.Max(maxV, b.value)
	}
	left.X.Max = maxV * 1.08
	for i, b := range bars {
		vals := make(plotter.Values, len(bars))
		vals[i] = b.value
		bc, err := plotter.NewBarChart(vals, vg.Points(14))
		if err != nil {
			return nil, err
		}
		bc.Horizontal = true
		bc.Color = b.col
		bc.LineStyle.Width = 0
		left.Add(bc)
		labels = append(labels, fmt.Sprintf("%s  %.0f ms", b.label, b.value*1000))
	}
	left.NominalY(labels...)
	left.Add(plotter.NewGrid())
	return left, nil
}

// throughputPlot draws the throughput of Docker's bridge and cniplug by parallelism, side by side.
func (r *results) throughputPlot() (*plot.Plot, error) {
	right := plot.New()
	right.Title.Text = "Throughput, docker run --rm"
	right.Y.Label.Text = "lifecycles / s"
	right.X.Label.Text = "parallel lifecycles"
	right.Y.Min = 0
	var names []string
	brVals, cnVals := plotter.Values{}, plotter.Values{}
	for _, p := range r.Options.Parallelism {
		names = append(names, fmt.Sprint(p))
		brVals = append(brVals, r.Throughput["bridge"][p])
		cnVals = append(cnVals, r.Throughput["cniplug"][p])
	}
	w := vg.Points(18)
	brBars, err := plotter.NewBarChart(brVals, w)
	if err != nil {
		return nil, err
	}
	brBars.Color, brBars.LineStyle.Width, brBars.Offset = colBridge, 0, -w/2
	cnBars, err := plotter.NewBarChart(cnVals, w)
	if err != nil {
		return nil, err
	}
	cnBars.Color, cnBars.LineStyle.Width, cnBars.Offset = colCniplug, 0, w/2
	right.Add(brBars, cnBars)
	right.Legend.Add("Docker bridge", brBars)
	right.Legend.Add("cniplug", cnBars)
	right.Legend.Top, right.Legend.Left = true, true
	right.NominalX(names...)
	right.X.Min, right.X.Max = -0.7, float64(len(names))-0.3
	maxT := 0.0
	for _, v := range append(append(plotter.Values{}, brVals...), cnVals...) {
		maxT = math.Max(maxT, v)
	}
	right.Y.Max = maxT * 1.3 // room for the legend
	return right, nil
}

// writeSideBySide writes the two plots side by side as a PNG.
func writeSideBySide(path string, left, right *plot.Plot) error {
	img := vgimg.New(vg.Points(960), vg.Points(360))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(16), PadTop: vg.Points(8), PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{{left, right}}, tiles, dc)
	left.Draw(canvases[0][0])
	right.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = vgimg.PngCanvas{Canvas: img}.WriteTo(f)
	return err
}
