package testutil

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DHCPPacket is a DHCP message seen on the wire at the LAN's server link, whether or not dnsmasq accepted it
// (the server's kernel drops some before they reach dnsmasq's socket, e.g. v1.9.1's unicast releases from 0.0.0.0).
type DHCPPacket struct {
	Time   time.Time
	Type   string // DISCOVER, OFFER, REQUEST, ... (option 53)
	Src    net.IP // IP header
	Dst    net.IP
	CIAddr net.IP
	YIAddr net.IP
	CHAddr string
	// ClientID is option 61 (client identifier) as dnsmasq's lease file shows it (decodeClientID): text when
	// printable after the type byte 0 (the CNI dhcp plugin's "<containerID>/<network>/<ifname>"), else hex.
	ClientID string
	Inbound  bool // towards the server
}

func (p DHCPPacket) String() string {
	return fmt.Sprintf("%s %s -> %s ciaddr %s yiaddr %s chaddr %s client-id %q", p.Type, p.Src, p.Dst, p.CIAddr, p.YIAddr, p.CHAddr, p.ClientID)
}

var dhcpTypes = map[byte]string{1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}

// dhcpSniffer records the DHCP messages crossing one link, through an AF_PACKET socket opened in the link's
// netns (it sees frames before the IP layer judges them).
type dhcpSniffer struct {
	fd   int
	quit atomic.Bool
	mu   sync.Mutex
	pkts []DHCPPacket
	done chan struct{}
}

// startDHCPSniffer must run on a thread in the link's netns.
func startDHCPSniffer(ifName string) (*dhcpSniffer, error) {
	ifi, err := net.InterfaceByName(ifName)
	if err != nil {
		return nil, err
	}
	// ETH_P_ALL: a socket of one protocol sees only received frames, not the server's replies.
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding packet socket to %s: %w", ifName, err)
	}
	// A receive timeout lets the reader notice stop.
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	s := &dhcpSniffer{fd: fd, done: make(chan struct{})}
	go s.read()
	return s, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *dhcpSniffer) read() {
	defer close(s.done)
	buf := make([]byte, 2048)
	for !s.quit.Load() {
		n, from, err := unix.Recvfrom(s.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		p, ok := parseDHCP(buf[:n])
		if !ok {
			continue
		}
		p.Inbound = ll.Pkttype != unix.PACKET_OUTGOING
		s.mu.Lock()
		s.pkts = append(s.pkts, p)
		s.mu.Unlock()
	}
}

// stop ends the reader (within its receive timeout) and then closes the socket.
func (s *dhcpSniffer) stop() {
	s.quit.Store(true)
	<-s.done
	unix.Close(s.fd)
}

func (s *dhcpSniffer) packets() []DHCPPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]DHCPPacket(nil), s.pkts...)
}

// parseDHCP decodes an IPv4/UDP datagram to or from port 67/68 carrying a DHCP message.
func parseDHCP(b []byte) (DHCPPacket, bool) {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_UDP {
		return DHCPPacket{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	if len(b) < ihl+8 {
		return DHCPPacket{}, false
	}
	src, dst := net.IP(append([]byte(nil), b[12:16]...)), net.IP(append([]byte(nil), b[16:20]...))
	udp := b[ihl:]
	sport, dport := binary.BigEndian.Uint16(udp[0:2]), binary.BigEndian.Uint16(udp[2:4])
	if !((sport == 67 || sport == 68) && (dport == 67 || dport == 68)) {
		return DHCPPacket{}, false
	}
	m := udp[8:]
	if len(m) < 240 || binary.BigEndian.Uint32(m[236:240]) != 0x63825363 {
		return DHCPPacket{}, false
	}
	p := DHCPPacket{Time: time.Now(), Src: src, Dst: dst,
		CIAddr: net.IP(append([]byte(nil), m[12:16]...)), YIAddr: net.IP(append([]byte(nil), m[16:20]...)),
		CHAddr: net.HardwareAddr(m[28:34]).String()}
	for opts := m[240:]; len(opts) > 0; {
		code := opts[0]
		if code == 255 {
			break
		}
		if code == 0 {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			break
		}
		if code == 53 && opts[1] == 1 {
			p.Type = dhcpTypes[opts[2]]
		}
		if code == 61 {
			hex := make([]string, 0, opts[1])
			for _, c := range opts[2 : 2+int(opts[1])] {
				hex = append(hex, fmt.Sprintf("%02x", c))
			}
			p.ClientID = decodeClientID(strings.Join(hex, ":"))
		}
		opts = opts[2+int(opts[1]):]
	}
	return p, p.Type != ""
}
