// Package cniargs decodes the extra CNI arguments Docker users may pass to cniplug — `docker network create
// --opt cni.<...>`, `--ipam-opt cni.<...>` and `docker run --network name=N,driver-opt=cni.<...>` — against a
// fixed allow-list. Docker users must not be able to point CNI plugins at files or turn on arbitrary
// behaviour, so only these keys are accepted, with strictly checked values:
//
//	cni.args.K8S_POD_NAME, cni.args.K8S_POD_NAMESPACE, cni.args.K8S_POD_UID, cni.args.K8S_POD_INFRA_CONTAINER_ID
//	    -> CNI_ARGS KEY=value (value: letters, digits, '.', '_' and '-', at most 253 characters)
//	cni.bandwidth.ingressRate, .ingressBurst, .egressRate, .egressBurst
//	    -> the "bandwidth" capability (bits per second / bits; rate and burst go together), for chains with
//	       the bandwidth plugin
package cniargs

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Prefix marks cniplug's extra-argument options.
const Prefix = "cni."

const (
	argsPrefix      = Prefix + "args."
	bandwidthPrefix = Prefix + "bandwidth."
)

// argKeys are the CNI_ARGS keys a Docker user may set.
var argKeys = []string{"K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID"}

// bandwidthKeys are the bandwidth capability fields a Docker user may set.
var bandwidthKeys = []string{"ingressRate", "ingressBurst", "egressRate", "egressBurst"}

var argValue = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._\-]{0,252}$`)

// Allowed lists every accepted option name, for error messages.
func Allowed() []string {
	var out []string
	for _, k := range argKeys {
		out = append(out, argsPrefix+k)
	}
	for _, k := range bandwidthKeys {
		out = append(out, bandwidthPrefix+k)
	}
	return out
}

// Extra is what the options ask for: CNI_ARGS pairs and capability args.
type Extra struct {
	Args           [][2]string    `json:"args,omitempty"`
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
}

// Empty reports whether nothing was asked for.
func (e Extra) Empty() bool { return len(e.Args) == 0 && len(e.CapabilityArgs) == 0 }

// IsOption reports whether an option key is one of cniplug's extra-argument options (valid or not).
func IsOption(key string) bool { return strings.HasPrefix(strings.ToLower(key), Prefix) }

// Parse decodes the cni.* options among opts (other keys are ignored: the caller decides about them). Any
// cni.* key not on the allow-list, or with an invalid value, is an error that lists what is allowed.
func Parse(opts map[string]string) (Extra, error) {
	var e Extra
	keys := make([]string, 0, len(opts))
	for k := range opts {
		if IsOption(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	bw := map[string]uint64{}
	for _, k := range keys {
		v := opts[k]
		// The docker CLI lowercases driver-opt keys, so names are matched without regard to case.
		lk := strings.ToLower(k)
		argKey := canonical(argKeys, strings.TrimPrefix(lk, argsPrefix))
		bwKey := canonical(bandwidthKeys, strings.TrimPrefix(lk, bandwidthPrefix))
		switch {
		case strings.HasPrefix(lk, argsPrefix) && argKey != "":
			if !argValue.MatchString(v) {
				return Extra{}, fmt.Errorf("option %s=%q: the value must be 1-253 letters, digits, '.', '_' or '-', starting with a letter or digit", k, v)
			}
			e.Args = append(e.Args, [2]string{argKey, v})
		case strings.HasPrefix(lk, bandwidthPrefix) && bwKey != "":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 || n > 1<<50 {
				return Extra{}, fmt.Errorf("option %s=%q: want a positive whole number (bits per second for rates, bits for bursts)", k, v)
			}
			bw[bwKey] = n
		default:
			return Extra{}, fmt.Errorf("option %s is not allowed: the CNI options cniplug accepts are %s", k, strings.Join(Allowed(), ", "))
		}
	}
	if len(bw) > 0 {
		for _, dir := range []string{"ingress", "egress"} {
			_, rate := bw[dir+"Rate"]
			_, burst := bw[dir+"Burst"]
			if rate != burst {
				return Extra{}, fmt.Errorf("options %s%sRate and %s%sBurst must be given together", bandwidthPrefix, dir, bandwidthPrefix, dir)
			}
		}
		m := map[string]any{}
		for k, v := range bw {
			m[k] = v
		}
		e.CapabilityArgs = map[string]any{"bandwidth": m}
	}
	return e, nil
}

// Merge returns e overridden by o (container options over network options), key by key and, for the
// bandwidth capability, field by field.
func (e Extra) Merge(o Extra) Extra {
	out := Extra{}
	seen := map[string]int{}
	for _, kv := range append(append([][2]string{}, e.Args...), o.Args...) {
		if i, ok := seen[kv[0]]; ok {
			out.Args[i] = kv
			continue
		}
		seen[kv[0]] = len(out.Args)
		out.Args = append(out.Args, kv)
	}
	for _, caps := range []map[string]any{e.CapabilityArgs, o.CapabilityArgs} {
		for k, v := range caps {
			if out.CapabilityArgs == nil {
				out.CapabilityArgs = map[string]any{}
			}
			// Objects (bandwidth) merge field by field: a container's ingress limits keep the network's egress ones.
			if m, ok := v.(map[string]any); ok {
				merged := map[string]any{}
				if prev, ok := out.CapabilityArgs[k].(map[string]any); ok {
					for f, x := range prev {
						merged[f] = x
					}
				}
				for f, x := range m {
					merged[f] = x
				}
				v = merged
			}
			out.CapabilityArgs[k] = v
		}
	}
	return out
}

// Check reports capability args the CNI chain cannot honour (no plugin declares the capability).
func (e Extra) Check(cniName string, declared map[string]bool) error {
	for c := range e.CapabilityArgs {
		if !declared[c] {
			return fmt.Errorf("options %s* need a plugin with the %q capability in CNI network %q's chain (e.g. {\"type\":\"bandwidth\",\"capabilities\":{\"bandwidth\":true}})", Prefix+c+".", c, cniName)
		}
	}
	return nil
}

// Apply adds the extra arguments to a request's CNI_ARGS and capability args.
func (e Extra) Apply(args [][2]string, caps map[string]any) ([][2]string, map[string]any) {
	args = append(args, e.Args...)
	for k, v := range e.CapabilityArgs {
		if caps == nil {
			caps = map[string]any{}
		}
		caps[k] = v
	}
	return args, caps
}

// canonical returns the entry of list equal to s regardless of case, or "".
func canonical(list []string, s string) string {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return x
		}
	}
	return ""
}
