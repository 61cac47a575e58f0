package hostports

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// OptionPortMap is the CreateEndpoint option carrying `docker run -p` (libnetwork's netlabel.PortMap).
const OptionPortMap = "com.docker.network.portmap"

// MaxMappings bounds how many ports one container may publish: each costs a few iptables calls, and the
// whole CreateEndpoint must finish within Docker's plugin timeout.
const MaxMappings = 256

// Binding is one entry of Docker's portmap option (libnetwork's types.PortBinding, JSON-encoded).
type Binding struct {
	Proto       uint8  `json:"Proto"`
	IP          string `json:"IP"`
	Port        uint16 `json:"Port"`
	HostIP      string `json:"HostIP"`
	HostPort    uint16 `json:"HostPort"`
	HostPortEnd uint16 `json:"HostPortEnd"`
}

var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}

// ParseDockerPortmap decodes the portmap option as it arrives in a CreateEndpoint request (already
// JSON-decoded into interfaces). Absent or empty means no published ports. It validates everything it
// returns: protocols tcp/udp/sctp, container ports 1-65535, host ports 0 (any) or a range low<=high, and host
// IPs that parse.
func ParseDockerPortmap(v any) ([]Binding, error) {
	if v == nil {
		return nil, nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("malformed %s option: %w", OptionPortMap, err)
	}
	return parseBindings(raw)
}

func parseBindings(raw []byte) ([]Binding, error) {
	var bs []Binding
	if err := json.Unmarshal(raw, &bs); err != nil {
		return nil, fmt.Errorf("malformed %s option: %w", OptionPortMap, err)
	}
	if len(bs) > MaxMappings {
		return nil, fmt.Errorf("%d published ports requested; at most %d are supported per container", len(bs), MaxMappings)
	}
	for i := range bs {
		b := &bs[i]
		name, ok := protoNames[b.Proto]
		if !ok || name == "icmp" {
			return nil, fmt.Errorf("published port %d: unsupported protocol number %d (tcp, udp and sctp can be published)", b.Port, b.Proto)
		}
		if b.Port == 0 {
			return nil, fmt.Errorf("published port with container port 0/%s", name)
		}
		if b.HostPortEnd != 0 && b.HostPortEnd < b.HostPort {
			return nil, fmt.Errorf("published port %d/%s: host port range %d-%d is reversed", b.Port, name, b.HostPort, b.HostPortEnd)
		}
		if b.HostPort == 0 && b.HostPortEnd != 0 {
			return nil, fmt.Errorf("published port %d/%s: host port range starts at 0", b.Port, name)
		}
		if b.HostIP != "" {
			ip := net.ParseIP(b.HostIP)
			if ip == nil {
				return nil, fmt.Errorf("published port %d/%s: invalid host IP %q", b.Port, name, b.HostIP)
			}
			b.HostIP = ip.String()
		}
	}
	return bs, nil
}

// Resolve turns Docker's bindings into concrete mappings: a host port of 0 becomes a free ephemeral port,
// a host port range becomes its first free port. taken reports ports other attachments already publish;
// ports are also checked by binding them on the host (TCP and UDP), so a port a host process listens on is
// refused with "host port N/proto is already in use".
func Resolve(bs []Binding, taken func(Mapping) bool) ([]Mapping, error) {
	var out []Mapping
	chosen := func(m Mapping) bool {
		for _, c := range out {
			if Overlap(c, m) {
				return true
			}
		}
		return taken != nil && taken(m)
	}
	for _, b := range bs {
		m := Mapping{Proto: protoNames[b.Proto], HostIP: b.HostIP, ContainerPort: int(b.Port)}
		switch {
		case b.HostPort == 0:
			port, err := ephemeral(m, chosen)
			if err != nil {
				return nil, err
			}
			m.HostPort = port
		case b.HostPortEnd > b.HostPort:
			var errs []error
			for p := int(b.HostPort); p <= int(b.HostPortEnd); p++ {
				m.HostPort = p
				err := free(m, chosen)
				if err == nil {
					errs = nil
					break
				}
				errs = append(errs, err)
			}
			if errs != nil {
				return nil, fmt.Errorf("no free host port in %d-%d/%s: %w", b.HostPort, b.HostPortEnd, m.Proto, errs[0])
			}
		default:
			m.HostPort = int(b.HostPort)
			if err := free(m, chosen); err != nil {
				return nil, err
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// Overlap reports whether two mappings compete for the same host port.
func Overlap(a, b Mapping) bool {
	if a.Proto != b.Proto || a.HostPort != b.HostPort {
		return false
	}
	if isAny(a.HostIP) || isAny(b.HostIP) {
		return true
	}
	return net.ParseIP(a.HostIP).Equal(net.ParseIP(b.HostIP))
}

func isAny(ip string) bool {
	if ip == "" {
		return true
	}
	p := net.ParseIP(ip)
	return p != nil && p.IsUnspecified()
}

// ErrInUse marks a host port that is taken.
var ErrInUse = errors.New("already in use")

func free(m Mapping, chosen func(Mapping) bool) error {
	if chosen(m) {
		return fmt.Errorf("host port %d/%s is already in use (published by another container)", m.HostPort, m.Proto)
	}
	return bindTest(m)
}

// bindTest binds the host port on the host IP (every address when none is given) and releases it at once.
func bindTest(m Mapping) error {
	addr := net.JoinHostPort(m.HostIP, strconv.Itoa(m.HostPort))
	if isAny(m.HostIP) {
		addr = net.JoinHostPort("", strconv.Itoa(m.HostPort))
	}
	var err error
	switch m.Proto {
	case "tcp":
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			l.Close()
		}
	case "udp":
		var c net.PacketConn
		if c, err = net.ListenPacket("udp", addr); err == nil {
			c.Close()
		}
	default:
		return nil // sctp: no portable bind test; conflicts with other containers are still found
	}
	if err == nil {
		return nil
	}
	if isAddrInUse(err) {
		return fmt.Errorf("host port %d/%s is %w", m.HostPort, m.Proto, ErrInUse)
	}
	if isAddrNotAvail(err) {
		return fmt.Errorf("cannot publish on host IP %s: it is not an address of this host", m.HostIP)
	}
	return fmt.Errorf("host port %d/%s cannot be used: %w", m.HostPort, m.Proto, err)
}

// ephemeral asks the kernel for a free port (binding port 0), skipping ports other containers publish.
func ephemeral(m Mapping, chosen func(Mapping) bool) (int, error) {
	for i := 0; i < 20; i++ {
		host := m.HostIP
		if isAny(host) {
			host = ""
		}
		var port int
		switch m.Proto {
		case "udp":
			c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
			if err != nil {
				return 0, fmt.Errorf("choosing a host port for %d/udp: %w", m.ContainerPort, err)
			}
			port = c.LocalAddr().(*net.UDPAddr).Port
			c.Close()
		default:
			l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
			if err != nil {
				return 0, fmt.Errorf("choosing a host port for %d/%s: %w", m.ContainerPort, m.Proto, err)
			}
			port = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		m.HostPort = port
		if free(m, chosen) == nil {
			return port, nil
		}
	}
	return 0, fmt.Errorf("could not find a free host port for %d/%s", m.ContainerPort, m.Proto)
}

func isAddrInUse(err error) bool    { return errors.Is(err, syscall.EADDRINUSE) }
func isAddrNotAvail(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }
