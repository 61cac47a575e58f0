// Package dockerapi asks the Docker Engine which endpoints of a driver's networks are live, so that cniplug
// can release attachments Docker forgot (Docker replays nothing to a remote driver after a crash or reboot).
package dockerapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to the Docker Engine API over its unix socket.
type Client struct {
	http *http.Client
}

// New returns a client for the Engine API socket at path.
func New(path string) *Client {
	return &Client{http: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Live is Docker's view of one driver's networks: network ID -> endpoint IDs of running containers.
type Live map[string]map[string]bool

// Network is one of the driver's Docker networks with the endpoints of its running containers.
type Network struct {
	ID        string
	Name      string
	Endpoints map[string]Container // endpoint ID -> the container that owns it
}

// Container is a running container attached to a network.
type Container struct {
	ID   string
	Name string
}

// Inventory is everything Docker knows about one driver's networks, by network ID.
type Inventory map[string]*Network

// Live reduces the inventory to network ID -> live endpoint IDs.
func (inv Inventory) Live() Live {
	live := Live{}
	for id, n := range inv {
		eps := map[string]bool{}
		for ep := range n.Endpoints {
			eps[ep] = true
		}
		live[id] = eps
	}
	return live
}

// LiveEndpoints is Inventory reduced to network ID -> live endpoint IDs.
func (c *Client) LiveEndpoints(ctx context.Context, ids []string) (Live, error) {
	inv, err := c.Inventory(ctx, ids)
	if err != nil {
		return nil, err
	}
	return inv.Live(), nil
}

// Inventory returns, of the networks with the given IDs, those Docker still has, with their names and the
// containers on them; an ID missing from the result is a network Docker deleted. Networks are picked by ID and
// not by driver name: a managed plugin cannot see the name Docker registered it under (a tag, an alias), and a
// wrong name would make every network look deleted and every live endpoint forgotten.
func (c *Client) Inventory(ctx context.Context, ids []string) (Inventory, error) {
	var nets []struct {
		ID   string `json:"Id"`
		Name string `json:"Name"`
	}
	if err := c.get(ctx, "/networks", &nets); err != nil {
		return nil, err
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	inv := Inventory{}
	for _, n := range nets {
		if !want[n.ID] {
			continue
		}
		var detail struct {
			Containers map[string]struct {
				Name       string `json:"Name"`
				EndpointID string `json:"EndpointID"`
			} `json:"Containers"`
		}
		err := c.get(ctx, "/networks/"+url.PathEscape(n.ID), &detail)
		if errors.Is(err, errNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return nil, err
		}
		nw := &Network{ID: n.ID, Name: n.Name, Endpoints: map[string]Container{}}
		for id, ct := range detail.Containers {
			nw.Endpoints[ct.EndpointID] = Container{ID: id, Name: ct.Name}
		}
		inv[n.ID] = nw
	}
	return inv, nil
}

var errNotFound = errors.New("not found")

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("docker API %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("docker API %s: %w", path, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("docker API %s: %w: %s", path, errNotFound, body)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("docker API %s: %s: %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, out)
}
