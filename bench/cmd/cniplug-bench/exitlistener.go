package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// exitListener collects taskstats exit records of every CPU.
type exitListener struct {
	fd   int
	mu   sync.Mutex
	recs []exitRecord
	err  error
}

// startExitListener registers for the exit records of all CPUs.
func startExitListener() (*exitListener, error) {
	fam, err := netlink.GenlFamilyGet("TASKSTATS")
	if err != nil {
		return nil, fmt.Errorf("taskstats: %w", err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	cpus, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	mask := append([]byte(strings.TrimSpace(string(cpus))), 0)
	attrLen := 4 + len(mask)
	msg := make([]byte, 16+4+(attrLen+3)&^3)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], fam.ID)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	msg[16] = unix.TASKSTATS_CMD_GET
	msg[17] = 1 // TASKSTATS_GENL_VERSION
	binary.NativeEndian.PutUint16(msg[20:], uint16(attrLen))
	binary.NativeEndian.PutUint16(msg[22:], unix.TASKSTATS_CMD_ATTR_REGISTER_CPUMASK)
	copy(msg[24:], mask)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("taskstats register: %w", err)
	}
	l := &exitListener{fd: fd}
	acked := make(chan error, 1)
	go l.read(fam.ID, acked)
	select {
	case err := <-acked:
		if err != nil {
			l.close()
			return nil, fmt.Errorf("taskstats register: %w", err)
		}
	case <-time.After(5 * time.Second):
		l.close()
		return nil, fmt.Errorf("taskstats register: no answer")
	}
	return l, nil
}

func (l *exitListener) read(family uint16, acked chan<- error) {
	buf := make([]byte, 1<<20)
	for {
		n, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.mu.Lock()
			if err != unix.EBADF {
				l.err = err // ENOBUFS: records were lost
			}
			l.mu.Unlock()
			if err == unix.ENOBUFS {
				continue
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			switch {
			case m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4:
				errno := int32(binary.NativeEndian.Uint32(m.Data))
				select {
				case acked <- map[bool]error{true: nil, false: syscall.Errno(-errno)}[errno == 0]:
				default:
				}
			case m.Header.Type == family && len(m.Data) > 4:
				l.parse(m.Data[4:])
			}
		}
	}
}

// parse takes the TASKSTATS_TYPE_AGGR_PID records (one per exiting thread) of a message's attributes.
func (l *exitListener) parse(attrs []byte) {
	for len(attrs) >= 4 {
		alen := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if alen < 4 || alen > len(attrs) {
			return
		}
		if typ == unix.TASKSTATS_TYPE_AGGR_PID {
			inner := attrs[4:alen]
			for len(inner) >= 4 {
				ilen := int(binary.NativeEndian.Uint16(inner))
				ityp := binary.NativeEndian.Uint16(inner[2:]) & 0x3fff
				if ilen < 4 || ilen > len(inner) {
					break
				}
				if ityp == unix.TASKSTATS_TYPE_STATS {
					var ts unix.Taskstats
					copy(unsafe.Slice((*byte)(unsafe.Pointer(&ts)), unsafe.Sizeof(ts)), inner[4:ilen])
					l.add(&ts)
				}
				inner = inner[(ilen+3)&^3:]
			}
		}
		if (alen+3)&^3 >= len(attrs) {
			return
		}
		attrs = attrs[(alen+3)&^3:]
	}
}

func (l *exitListener) add(ts *unix.Taskstats) {
	comm := make([]byte, 0, len(ts.Ac_comm))
	for _, c := range ts.Ac_comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	tgid := int(ts.Ac_tgid)
	if tgid == 0 {
		tgid = int(ts.Ac_pid) // kernels before taskstats version 12
	}
	l.mu.Lock()
	l.recs = append(l.recs, exitRecord{PID: int(ts.Ac_pid), TGID: tgid, PPID: int(ts.Ac_ppid), Comm: string(comm), CPU: float64(ts.Ac_utime+ts.Ac_stime) / 1e6})
	l.mu.Unlock()
}

// mark is the number of records so far, where a window starts or ends.
func (l *exitListener) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recs)
}

// since returns the records from mark on, and the error (lost records) seen so far.
func (l *exitListener) since(mark int) ([]exitRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]exitRecord(nil), l.recs[mark:]...), l.err
}

func (l *exitListener) close() { unix.Close(l.fd) }
