// Package metrics defines cniplug's Prometheus metrics and serves them, with a health check (and, when asked,
// pprof), on a listener of their own, separate from the root-only plugin socket.
//
// Everything lives in a Metrics value that owns its registry: no package-level state, so tests and several
// plugins in one process never share counters.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names, for dashboards and for the benchmark that scrapes them.
const (
	RequestsTotal         = "cniplug_requests_total"
	RequestErrorsTotal    = "cniplug_request_errors_total"
	RequestDuration       = "cniplug_request_duration_seconds"
	CNIExecDuration       = "cniplug_cni_exec_duration_seconds"
	CNIExecErrorsTotal    = "cniplug_cni_exec_errors_total"
	BackgroundRemoval     = "cniplug_background_removal_duration_seconds"
	WarmFill              = "cniplug_warm_fill_duration_seconds"
	AttachmentsGauge      = "cniplug_attachments"
	AttachmentsScrapeFail = "cniplug_attachments_scrape_errors_total"
)

// durationBuckets spans 1 ms to about 33 s: Docker calls that run no CNI plugin take well under a millisecond
// or two, CNI ADD/DEL take tens to hundreds of milliseconds, and Docker gives up on a plugin at 30 s. A fresh
// slice each time: no state is shared between Metrics values.
func durationBuckets() []float64 { return prometheus.ExponentialBuckets(0.001, 2, 16) }

// AttachmentKey names one series of the live attachments gauge.
type AttachmentKey struct {
	Phase      string
	CNINetwork string
}

// Options configures New.
type Options struct {
	// Attachments counts the live attachments by phase and CNI network. It is called at each scrape, so the
	// gauge is read from the durable state and stays right across restarts and reconciliation. nil: no gauge.
	Attachments func() (map[AttachmentKey]int, error)
}

// Metrics holds cniplug's collectors and the registry they are registered in.
type Metrics struct {
	reg            *prometheus.Registry
	requests       *prometheus.CounterVec
	requestErrors  *prometheus.CounterVec
	requestSeconds *prometheus.HistogramVec
	execSeconds    *prometheus.HistogramVec
	execErrors     *prometheus.CounterVec
	// backgroundRemoval: removals after DeleteEndpoint answered, so that handler time plus this is all of
	// cniplug's time per lifecycle.
	backgroundRemoval *prometheus.HistogramVec
	// warmFill: the ADDs that refill warm pools, off every request's path but cniplug's time all the same.
	warmFill *prometheus.HistogramVec
}

// New creates cniplug's metrics in a registry of their own, together with the Go runtime and process
// collectors (process_resident_memory_bytes is the plugin's RSS).
func New(o Options) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RequestsTotal,
			Help: "Requests served on the plugin socket, by Docker call (e.g. NetworkDriver.Join) and CNI network where known.",
		}, []string{"method", "cni_network"}),
		requestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RequestErrorsTotal,
			Help: "Requests answered with an error, by Docker call and CNI network where known.",
		}, []string{"method", "cni_network"}),
		requestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    RequestDuration,
			Help:    "Time cniplug took to answer a request (CNI plugin execs included), by Docker call and CNI network where known.",
			Buckets: durationBuckets(),
		}, []string{"method", "cni_network"}),
		execSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    CNIExecDuration,
			Help:    "Duration of each CNI plugin exec, by plugin type and CNI command (ADD, DEL, CHECK, VERSION, ...).",
			Buckets: durationBuckets(),
		}, []string{"plugin", "command"}),
		backgroundRemoval: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    BackgroundRemoval,
			Help:    "Duration of each attachment removal run after DeleteEndpoint answered (async-delete networks; CNI DEL included), by result (ok, error).",
			Buckets: durationBuckets(),
		}, []string{"result"}),
		warmFill: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    WarmFill,
			Help:    "Duration of each ADD that refilled a warm pool (--ipam-opt warm-pool; CNI ADD included), by result (ok, error).",
			Buckets: durationBuckets(),
		}, []string{"result"}),
		execErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: CNIExecErrorsTotal,
			Help: "CNI plugin execs that failed (including those killed at the CNI timeout), by plugin type and command.",
		}, []string{"plugin", "command"}),
	}
	m.reg.MustRegister(m.requests, m.requestErrors, m.requestSeconds, m.execSeconds, m.execErrors, m.backgroundRemoval, m.warmFill,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if o.Attachments != nil {
		m.reg.MustRegister(newAttachmentCollector(o.Attachments))
	}
	return m
}

// Registry is the registry holding every cniplug metric.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveRequest records one request on the plugin socket. cniNetwork is "" when the request names none
// (e.g. GetCapabilities) or cniplug does not know it.
func (m *Metrics) ObserveRequest(method, cniNetwork string, d time.Duration, err error) {
	m.requests.WithLabelValues(method, cniNetwork).Inc()
	m.requestSeconds.WithLabelValues(method, cniNetwork).Observe(d.Seconds())
	if err != nil {
		m.requestErrors.WithLabelValues(method, cniNetwork).Inc()
	}
}

// ObserveExec records one CNI plugin exec (it implements cnibridge.ExecObserver).
func (m *Metrics) ObserveExec(plugin, command string, d time.Duration, err error) {
	m.execSeconds.WithLabelValues(plugin, command).Observe(d.Seconds())
	if err != nil {
		m.execErrors.WithLabelValues(plugin, command).Inc()
	}
}

// ObserveBackgroundRemoval records one removal that ran after Docker had its answer (it implements
// attach.RemovalObserver).
func (m *Metrics) ObserveBackgroundRemoval(d time.Duration, err error) {
	m.backgroundRemoval.WithLabelValues(resultLabel(err)).Observe(d.Seconds())
}

// ObserveWarmFill records one ADD that refilled a warm pool (it implements attach.WarmFillObserver).
func (m *Metrics) ObserveWarmFill(d time.Duration, err error) {
	m.warmFill.WithLabelValues(resultLabel(err)).Observe(d.Seconds())
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// attachmentCollector reads the live attachment counts at scrape time.
type attachmentCollector struct {
	count    func() (map[AttachmentKey]int, error)
	desc     *prometheus.Desc
	failures prometheus.Counter
}

func newAttachmentCollector(count func() (map[AttachmentKey]int, error)) *attachmentCollector {
	return &attachmentCollector{
		count: count,
		desc: prometheus.NewDesc(AttachmentsGauge,
			"Live CNI attachments by phase (adding, pending, endpoint, joined) and CNI network, read from cniplug's state.",
			[]string{"phase", "cni_network"}, nil),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: AttachmentsScrapeFail,
			Help: "Scrapes in which the attachment counts could not be read from the state store.",
		}),
	}
}

func (c *attachmentCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	c.failures.Describe(ch)
}

func (c *attachmentCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.count()
	if err != nil {
		// The rest of the scrape stays useful; the failure shows as a counter rather than a failed scrape.
		c.failures.Inc()
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k.Phase, k.CNINetwork)
	}
	c.failures.Collect(ch)
}
