package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cniplug/cniplug/admin"
)

// ErrNoAdmin is returned by a plugin that does not serve admin requests.
var ErrNoAdmin = errors.New("the plugin on this socket does not serve admin requests (is it an older cniplug?)")

// Client calls the admin methods of a running plugin over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the plugin socket at path. GC can run CNI DELs, so calls may take a while.
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{socket: socket, http: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// Status asks for the plugin's networks and counts.
func (c *Client) Status(ctx context.Context) (*admin.Status, []byte, error) {
	out := &admin.Status{}
	raw, err := c.call(ctx, "Cniplug.Status", struct{}{}, out)
	return out, raw, err
}

// Attachments lists the plugin's attachments.
func (c *Client) Attachments(ctx context.Context) (*admin.Attachments, []byte, error) {
	out := &admin.Attachments{}
	raw, err := c.call(ctx, "Cniplug.Attachments", struct{}{}, out)
	return out, raw, err
}

// GC runs (or with dryRun, previews) garbage collection.
func (c *Client) GC(ctx context.Context, dryRun bool) (*admin.GCReport, []byte, error) {
	out := &admin.GCReport{}
	raw, err := c.call(ctx, "Cniplug.GC", admin.GCRequest{DryRun: &dryRun}, out)
	return out, raw, err
}

// call POSTs req to /method and decodes the answer into out; it also returns the raw answer (for --json).
func (c *Client) call(ctx context.Context, method string, req, out any) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://cniplug/"+method, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the plugin on %s (is cniplug running, and are you root?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the plugin's answer: %w", err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, ErrNoAdmin
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Err string }
		if json.Unmarshal(raw, &e) == nil && e.Err != "" {
			return nil, errors.New(e.Err)
		}
		return nil, fmt.Errorf("%s: %s: %s", method, resp.Status, bytes.TrimSpace(raw))
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("decoding the plugin's answer to %s: %w", method, err)
	}
	return raw, nil
}
