// Package naming holds the naming rules every other package shares: how an ID is shortened, how an address
// is read out of a CIDR, and how a fresh ID or MAC is made.
package naming

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"strings"
)

// ShortIDLen is the length of a short ID, as Docker shows container and network IDs.
const ShortIDLen = 12

// ShortID returns the first ShortIDLen characters of id (all of a shorter id).
func ShortID(id string) string {
	if len(id) > ShortIDLen {
		return id[:ShortIDLen]
	}
	return id
}

// Address returns the address part of a CIDR ("10.0.0.2/24" -> "10.0.0.2"); a bare address is returned as is.
func Address(cidr string) string {
	if i := strings.IndexByte(cidr, '/'); i >= 0 {
		return cidr[:i]
	}
	return cidr
}

// RandomID returns 64 random hex characters, the form of Docker's IDs.
func RandomID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// RandomMAC returns a random locally administered unicast MAC address, as Docker generates for endpoints.
func RandomMAC() string {
	hw := make(net.HardwareAddr, 6)
	if _, err := rand.Read(hw); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	hw[0] = hw[0]&0xfe | 0x02
	return hw.String()
}
