package ipam

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cniplug/cniplug/naming"
	"github.com/docker/go-plugins-helpers/ipam"
)

// Every request is checked here before the IPAM driver acts on it: its pool ID is a state key, and its
// address, MAC and endpoint name go into CNI_ARGS. Docker's own requests always pass; anything else on the
// socket is refused with an error that names the field and its rule.

// poolIDPrefix and poolIDHexLen make the pool IDs RequestPool hands out: "cniplug-" and 24 hex digits.
const (
	poolIDPrefix = "cniplug-"
	poolIDHexLen = 24
)

// newPoolID returns a fresh pool ID, of the one form checkPoolID accepts.
func newPoolID() string { return poolIDPrefix + naming.RandomID()[:poolIDHexLen] }

// checkPoolID accepts only pool IDs of the form cniplug hands out (newPoolID).
func checkPoolID(id string) error {
	hex, ok := strings.CutPrefix(id, poolIDPrefix)
	if ok && len(hex) == poolIDHexLen && strings.Trim(hex, "0123456789abcdef") == "" {
		return nil
	}
	return &naming.FieldError{Field: "PoolID", Value: id, Rule: "a pool ID " + poolIDPrefix + "<24 hex digits> that this IPAM driver handed out"}
}

// checkEndpointName accepts the endpoint names Docker sends: printable text without ';' or '=', which
// CNI_ARGS ("K=V;K=V") cannot carry and Docker's container names never hold. The name's length is bounded
// where it is used (naming.BoundName), so a long container name never fails the CNI ADD.
func checkEndpointName(name string) error {
	ok := utf8.ValidString(name) && strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) < 0 &&
		!strings.ContainsAny(name, ";=")
	if ok {
		return nil
	}
	return &naming.FieldError{Field: "option " + endpointNameOption, Value: name,
		Rule: "a container name of printable characters without ';' or '='"}
}

func validateRequestPool(req *ipam.RequestPoolRequest) error {
	if req.Pool != "" {
		if err := naming.CheckCIDR("Pool (--subnet)", req.Pool); err != nil {
			return err
		}
	}
	if req.SubPool != "" {
		return naming.CheckCIDR("SubPool (--ip-range)", req.SubPool)
	}
	return nil
}

func validateRequestAddress(req *ipam.RequestAddressRequest) error {
	if err := checkPoolID(req.PoolID); err != nil {
		return err
	}
	if req.Address != "" {
		if err := naming.CheckIP("Address", req.Address); err != nil {
			return err
		}
	}
	if mac := req.Options[macAddressOption]; mac != "" {
		if err := naming.CheckMAC("option "+macAddressOption, mac); err != nil {
			return err
		}
	}
	return checkEndpointName(req.Options[endpointNameOption])
}

func validateReleaseAddress(req *ipam.ReleaseAddressRequest) error {
	if err := checkPoolID(req.PoolID); err != nil {
		return err
	}
	if req.Address == "" {
		return nil
	}
	return naming.CheckIP("Address", req.Address)
}
