package driver

import (
	"fmt"
	"strconv"
)

// Option keys understood in `docker network create --opt`, besides cniconf.OptCNI and the cni.* arguments.
const (
	// OptAsyncDelete: DeleteEndpoint returns once the removal is recorded and CNI DEL runs in the background.
	// On by default.
	OptAsyncDelete = "async-delete"
	// OptHostFirewall=false: cniplug adds no FORWARD rules; the CNI network manages its own firewall.
	OptHostFirewall = "host-firewall"
	// OptDirectJoin=true: at Join cniplug moves the link into the container's netns itself when the engine
	// created it already (Docker 28+), one link move instead of two; elsewhere Docker moves it.
	OptDirectJoin = "direct-join"
	// OptMasquerade=true: cniplug masquerades traffic leaving the network's prefixes, once for the network.
	OptMasquerade = "masquerade"

	// optEnableICC is the bridge driver's inter-container option; cniplug takes only its default, true.
	optEnableICC = "com.docker.network.bridge.enable_icc"

	genericOptions = "com.docker.network.generic"
	// Options Docker sets itself in CreateNetwork (libnetwork's netlabel package).
	internalOption   = "com.docker.network.internal"
	enableIPv4Option = "com.docker.network.enable_ipv4" // Docker 28+
)

// dockerFlags reads the flags Docker itself passes to CreateNetwork and refuses those cniplug cannot honour,
// so that none is accepted and silently ignored. It returns whether the network is internal.
func dockerFlags(options map[string]any) (internal bool, err error) {
	internal, err = boolFlag(options, internalOption)
	if err != nil {
		return false, err
	}
	if v, ok := options[enableIPv4Option]; ok {
		if on, err := boolFlag(options, enableIPv4Option); err != nil {
			return false, err
		} else if !on {
			return false, fmt.Errorf("--ipv4=false is not supported: the CNI network decides which address families its containers get (%s=%v)", enableIPv4Option, v)
		}
	}
	return internal, nil
}

// boolFlag reads a boolean Docker sends as a JSON bool (or, from some clients, a string).
func boolFlag(options map[string]any, key string) (bool, error) {
	switch v := options[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("docker sent %s=%q: want true or false", key, v)
		}
		return b, nil
	default:
		return false, fmt.Errorf("docker sent %s of type %T: want a boolean", key, v)
	}
}

// boolOption reads an optional true/false option, def when it is absent.
func boolOption(opts map[string]string, key string, def bool) (bool, error) {
	v, ok := opts[key]
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("--opt %s=%q: want true or false", key, v)
	}
	return b, nil
}

// stringOptions reads Docker's generic option map (`--opt k=v`, JSON-decoded as map[string]interface{}).
func stringOptions(v any) (map[string]string, error) {
	out := map[string]string{}
	if v == nil {
		return out, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("malformed network options: %T", v)
	}
	for k, val := range m {
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("option %q must be a string", k)
		}
		out[k] = s
	}
	return out, nil
}

// takeICC removes the bridge driver's enable_icc option from opts: true is what every cniplug network does,
// false is refused with the reason. Docker implements it by dropping frames between the ports of its own bridge,
// which only reach iptables with br_netfilter's bridge-nf-call-iptables at 1, a host-wide sysctl Docker sets
// and cniplug does not; on routed chains there is no bridge at all.
func takeICC(opts map[string]string) error {
	v, ok := opts[optEnableICC]
	if !ok {
		return nil
	}
	on, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("--opt %s=%q: want true or false", optEnableICC, v)
	}
	if !on {
		return fmt.Errorf("--opt %s=false is not supported: Docker drops traffic between the ports of its own bridge, "+
			"which needs br_netfilter's bridge-nf-call-iptables=1 (a host-wide setting cniplug does not change) and a bridge, "+
			"while a CNI chain may route instead; put containers that must not talk on separate networks, or use a CNI network with its own policy (Calico)", optEnableICC)
	}
	delete(opts, optEnableICC)
	return nil
}
