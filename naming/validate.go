package naming

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"unicode/utf8"
)

// FieldError is a request field that breaks its rule. Its message names the field as Docker's request names
// it and what is wanted, for the operator reading docker's output:
//
//	invalid MacAddress "02:00:00:5b:00:77;IP=10.91.0.200": want six hex bytes like 02:42:ac:11:00:02
type FieldError struct {
	Field string // e.g. "MacAddress", "NetworkID"
	Value string
	Rule  string // what the field must be, e.g. "six hex bytes like 02:42:ac:11:00:02"
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("invalid %s %s: want %s", e.Field, Quote(e.Value), e.Rule)
}

// maxQuoted bounds how much of a bad value an error message repeats.
const maxQuoted = 80

// Quote quotes s for a message, cut after maxQuoted bytes (a request may carry a value of a megabyte).
func Quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:maxQuoted]), len(s))
}

// dockerIDLen is the length of the IDs a dockerd makes for networks and endpoints.
const dockerIDLen = 64

// IsDockerID reports whether id has the form of the network and endpoint IDs a dockerd makes: 64 lowercase
// hex digits (RandomID's form).
func IsDockerID(id string) bool {
	if len(id) != dockerIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckDockerID checks that the request's field holds a Docker ID (see IsDockerID).
func CheckDockerID(field, id string) error {
	if IsDockerID(id) {
		return nil
	}
	return &FieldError{Field: field, Value: id, Rule: "a Docker ID of 64 lowercase hex digits"}
}

// CheckMAC checks that the field holds an Ethernet MAC as net.ParseMAC reads it (02:42:ac:11:00:02,
// 02-42-ac-11-00-02 or 0242.ac11.0002) and nothing else: the MAC reaches CNI_ARGS, where a ";" would start
// another argument.
func CheckMAC(field, mac string) error {
	if hw, err := net.ParseMAC(mac); err == nil && len(hw) == 6 {
		return nil
	}
	return &FieldError{Field: field, Value: mac, Rule: "six hex bytes like 02:42:ac:11:00:02"}
}

// CheckCIDR checks that the field holds an address with its prefix length, like 10.0.0.2/24 or fd00::2/64.
func CheckCIDR(field, cidr string) error {
	if _, _, err := net.ParseCIDR(cidr); err == nil {
		return nil
	}
	return &FieldError{Field: field, Value: cidr, Rule: "an address with its prefix length like 10.0.0.2/24 or fd00::2/64"}
}

// CheckIP checks that the field holds a bare IPv4 or IPv6 address, like 10.0.0.2 or fd00::2.
func CheckIP(field, ip string) error {
	if net.ParseIP(ip) != nil {
		return nil
	}
	return &FieldError{Field: field, Value: ip, Rule: "an IP address like 10.0.0.2 or fd00::2"}
}

// Bounds of a name passed on to CNI (BoundName).
const (
	// MaxNameLen is the longest name passed on as it is: a DNS name's limit, as for K8S_POD_NAME.
	MaxNameLen = 253
	// nameKeep is how much of a longer name is kept before its hash.
	nameKeep = 200
	// nameHashLen is how many hex digits of the name's SHA-256 follow the kept part.
	nameHashLen = 8
)

// BoundName bounds a name that cniplug passes on to CNI (the container's name in CNI_ARGS): Docker puts no
// limit on container names, and an environment variable of hundreds of KiB fails the plugin's exec with
// "argument list too long". A name of at most MaxNameLen (253) bytes is returned as it is. A longer one
// becomes its first 200 bytes (fewer if the 200th byte is inside a UTF-8 character), "-", and the first 8
// hex digits of the SHA-256 of the whole name: at most 209 bytes, the same for the same name, and different
// for two long names that share their first 200 bytes.
func BoundName(name string) string {
	if len(name) <= MaxNameLen {
		return name
	}
	keep := nameKeep
	for keep > 0 && !utf8.RuneStart(name[keep]) {
		keep--
	}
	sum := sha256.Sum256([]byte(name))
	return name[:keep] + "-" + hex.EncodeToString(sum[:])[:nameHashLen]
}
