package main

import (
	"fmt"
	"math"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cniplug/cniplug/metrics"
)

// samples is a set of durations in seconds.
type samples []float64

func (s samples) sorted() []float64 {
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	return c
}

// quantile interpolates linearly between the closest ranks (q in [0,1]).
func (s samples) quantile(q float64) float64 {
	c := s.sorted()
	if len(c) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(c)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

func (s samples) p50() float64 { return s.quantile(0.5) }
func (s samples) p99() float64 { return s.quantile(0.99) }

// timed runs a command and returns its wall time.
func timed(c *exec.Cmd) (time.Duration, error) {
	start := time.Now()
	out, err := c.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s: %w: %s", strings.Join(c.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return d, nil
}

// scrape is one reading of cniplug's metrics.
type scrape struct {
	requestSeconds float64            // all request handling time, and the background removals
	execSeconds    float64            // all CNI plugin exec time
	methodSeconds  map[string]float64 // per Docker call
	methodCount    map[string]float64
	deleting       float64 // attachments whose background removal (async-delete networks) has not finished
	adding         float64 // attachments whose ADD has not finished (a warm pool's refill, after a lifecycle)
	warm           float64 // warm attachments
}

func (e *env) scrape() (*scrape, error) {
	resp, err := http.Get("http://" + e.metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	s := &scrape{methodSeconds: map[string]float64{}, methodCount: map[string]float64{}}
	if f := fams[metrics.RequestDuration]; f != nil {
		for _, m := range f.GetMetric() {
			method := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" {
					method = l.GetValue()
				}
			}
			if strings.HasPrefix(method, "Cniplug.") {
				continue // the admin API is not part of a container's lifecycle
			}
			s.requestSeconds += m.GetHistogram().GetSampleSum()
			s.methodSeconds[method] += m.GetHistogram().GetSampleSum()
			s.methodCount[method] += float64(m.GetHistogram().GetSampleCount())
		}
	}
	// Removals that ran after DeleteEndpoint answered (async-delete, the default here) and the ADDs that
	// refilled a warm pool are cniplug's time too.
	for _, name := range []string{metrics.BackgroundRemoval, metrics.WarmFill} {
		if f := fams[name]; f != nil {
			for _, m := range f.GetMetric() {
				s.requestSeconds += m.GetHistogram().GetSampleSum()
			}
		}
	}
	if f := fams[metrics.CNIExecDuration]; f != nil {
		for _, m := range f.GetMetric() {
			s.execSeconds += m.GetHistogram().GetSampleSum()
		}
	}
	if f := fams[metrics.AttachmentsGauge]; f != nil {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "phase" {
					continue
				}
				switch l.GetValue() {
				case "deleting":
					s.deleting += m.GetGauge().GetValue()
				case "adding":
					s.adding += m.GetGauge().GetValue()
				case "warm":
					s.warm += m.GetGauge().GetValue()
				}
			}
		}
	}
	return s, nil
}

// settle waits until Docker has made every call of the lifecycles so far (DeleteEndpoint count reaches want):
// `docker run --rm` can return a moment before the endpoint's teardown is reported. want counts the
// DeleteEndpoint calls of both cniplug networks (the metrics are the plugin's, not per Docker network). It
// also waits until no background removal (async-delete network) is left running, so that its CNI DEL is not
// counted in the next lifecycle measured from the metrics, and until the warm pool is refilled (no ADD
// running, warmPoolSize warm), for the same reason. After 5 s it gives up and returns what it has.
func (e *env) settle(want float64) (*scrape, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := e.scrape()
		if err != nil {
			return nil, err
		}
		got := s.methodCount["NetworkDriver.DeleteEndpoint"]
		if got >= want && s.deleting == 0 && s.adding == 0 && s.warm >= warmPoolSize {
			return s, nil
		}
		if time.Now().After(deadline) {
			e.logf("settle: gave up waiting: %.0f of %.0f DeleteEndpoint calls served, %.0f background removals running, %.0f ADDs running, %.0f of %d warm",
				got, want, s.deleting, s.adding, s.warm, warmPoolSize)
			return s, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lifecycleCost is what one lifecycle cost inside cniplug, from two scrapes around it.
type lifecycleCost struct {
	inPlugin float64 // time in cniplug's handlers and its background removals
	inCNI    float64 // of which inside CNI plugin execs
}

func (c lifecycleCost) overhead() float64 { return c.inPlugin - c.inCNI }

func diff(before, after *scrape) lifecycleCost {
	return lifecycleCost{inPlugin: after.requestSeconds - before.requestSeconds, inCNI: after.execSeconds - before.execSeconds}
}

// parallel runs n jobs with p workers and returns the wall time of all of them.
func parallel(n, p int, job func(i int) error) (time.Duration, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	start := time.Now()
	for w := 0; w < p; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := job(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return time.Since(start), first
}
