package main

// The lab's real guest (lab/guest/build.sh makes a bootable Debian disk) and the live-disk
// NBD export through which files are written into it "as a running guest would": every
// NBD write goes through disk.write, so change tracking records it like any guest write.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// guestPlan is the VM that carries the real guest: one pvscsi disk the size of the image.
func guestPlan(image string) (vmPlan, error) {
	st, err := os.Stat(image)
	if err != nil {
		return vmPlan{}, fmt.Errorf("guest image: %v", err)
	}
	if st.Size()%(1<<20) != 0 {
		return vmPlan{}, fmt.Errorf("guest image %s is %d bytes, not a whole number of MiB", image, st.Size())
	}
	return vmPlan{name: "guest-debian", version: "vmx-13", guest: "debian12_64Guest", disksMB: []int64{st.Size() >> 20},
		powerOn: true, image: image}, nil
}

// fillFromImage copies the data extents of a sparse raw image onto a fresh base layer, keeping holes.
func fillFromImage(d *disk, image string) error {
	src, err := os.Open(image)
	if err != nil {
		return err
	}
	defer src.Close()
	fd := int(src.Fd())
	buf := make([]byte, 4<<20)
	var off int64
	for off < d.capacity {
		data, err := syscall.Seek(fd, off, 3 /* SEEK_DATA */)
		if err != nil {
			break
		}
		hole, err := syscall.Seek(fd, data, 4 /* SEEK_HOLE */)
		if err != nil || hole > d.capacity {
			hole = d.capacity
		}
		for p := data; p < hole; {
			n := int64(len(buf))
			if hole-p < n {
				n = hole - p
			}
			if _, err := src.ReadAt(buf[:n], p); err != nil && err != io.EOF {
				return err
			}
			if !allZero(buf[:n]) {
				if _, err := d.layers[0].f.WriteAt(buf[:n], p); err != nil {
					return err
				}
			}
			p += n
		}
		off = hole
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// liveExport is a writable NBD server over one VM disk's live view.
type liveExport struct {
	ln   net.Listener
	port int
}

var (
	liveMu      sync.Mutex
	liveExports = map[string]*liveExport{}
)

// serveLiveNBD starts (or stops, with stop=1) the writable NBD export of a VM disk's live view.
func (f *front) serveLiveNBD(w http.ResponseWriter, r *http.Request) {
	l := f.l
	q := r.URL.Query()
	l.mu.Lock()
	v := l.vmsByName[q.Get("vm")]
	l.mu.Unlock()
	if v == nil {
		http.Error(w, fmt.Sprintf("unknown VM %q", q.Get("vm")), http.StatusBadRequest)
		return
	}
	key, _ := strconv.Atoi(q.Get("disk"))
	d := v.disk(int32(key))
	if d == nil {
		http.Error(w, fmt.Sprintf("VM %s has no disk with key %q", v.name, q.Get("disk")), http.StatusBadRequest)
		return
	}
	id := v.name + "/" + strconv.Itoa(key)
	liveMu.Lock()
	defer liveMu.Unlock()
	if q.Get("stop") == "1" {
		if e := liveExports[id]; e != nil {
			_ = e.ln.Close()
			delete(liveExports, id)
		}
		writeJSON(w, map[string]interface{}{"stopped": true})
		return
	}
	e := liveExports[id]
	if e == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		e = &liveExport{ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
		liveExports[id] = e
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if err := serveNBD(c, d, func(p []byte, off int64) error {
						l.mu.Lock()
						l.syncTracking(v)
						l.mu.Unlock()
						return d.write(p, off)
					}); err != nil && !errors.Is(err, io.EOF) {
						logf("live NBD %s: %v", id, err)
					}
				}()
			}
		}()
	}
	writeJSON(w, map[string]interface{}{"uri": fmt.Sprintf("nbd://127.0.0.1:%d", e.port), "port": e.port, "host": "127.0.0.1"})
}

// NBD protocol constants (fixed newstyle handshake, simple replies).
const (
	nbdOptExportName   = 1
	nbdOptAbort        = 2
	nbdOptInfo         = 6
	nbdOptGo           = 7
	nbdRepAck          = 1
	nbdRepInfo         = 3
	nbdRepErrUnsup     = 1<<31 | 1
	nbdFlagHasFlags    = 1 << 0
	nbdFlagSendFlush   = 1 << 2
	nbdFlagSendFUA     = 1 << 3
	nbdCmdRead         = 0
	nbdCmdWrite        = 1
	nbdCmdDisc         = 2
	nbdCmdFlush        = 3
	nbdReplyMagic      = 0x67446698
	nbdRequestMagic    = 0x25609513
	nbdOptReplyMagic   = 0x3e889045565a9
	nbdMaxRequestBytes = 32 << 20
)

func serveNBD(c net.Conn, d *disk, write func([]byte, int64) error) error {
	be := binary.BigEndian
	hdr := make([]byte, 18)
	copy(hdr, "NBDMAGIC")
	copy(hdr[8:], "IHAVEOPT")
	be.PutUint16(hdr[16:], 1|2) // FIXED_NEWSTYLE | NO_ZEROES
	if _, err := c.Write(hdr); err != nil {
		return err
	}
	var cflags [4]byte
	if _, err := io.ReadFull(c, cflags[:]); err != nil {
		return err
	}
	noZeroes := be.Uint32(cflags[:])&2 != 0
	tflags := uint16(nbdFlagHasFlags | nbdFlagSendFlush | nbdFlagSendFUA)
	reply := func(opt, typ uint32, data []byte) error {
		b := make([]byte, 20+len(data))
		be.PutUint64(b, nbdOptReplyMagic)
		be.PutUint32(b[8:], opt)
		be.PutUint32(b[12:], typ)
		be.PutUint32(b[16:], uint32(len(data)))
		copy(b[20:], data)
		_, err := c.Write(b)
		return err
	}
	for negotiating := true; negotiating; {
		oh := make([]byte, 16)
		if _, err := io.ReadFull(c, oh); err != nil {
			return err
		}
		opt, n := be.Uint32(oh[8:]), be.Uint32(oh[12:])
		if n > 1<<16 {
			return fmt.Errorf("option %d of %d bytes", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		switch opt {
		case nbdOptExportName:
			b := make([]byte, 10, 134)
			be.PutUint64(b, uint64(d.capacity))
			be.PutUint16(b[8:], tflags)
			if !noZeroes {
				b = b[:134]
			}
			if _, err := c.Write(b); err != nil {
				return err
			}
			negotiating = false
		case nbdOptInfo, nbdOptGo:
			info := make([]byte, 12)
			be.PutUint16(info, 0) // NBD_INFO_EXPORT
			be.PutUint64(info[2:], uint64(d.capacity))
			be.PutUint16(info[10:], tflags)
			if err := reply(opt, nbdRepInfo, info); err != nil {
				return err
			}
			if err := reply(opt, nbdRepAck, nil); err != nil {
				return err
			}
			negotiating = opt != nbdOptGo
		case nbdOptAbort:
			_ = reply(opt, nbdRepAck, nil)
			return io.EOF
		default:
			if err := reply(opt, nbdRepErrUnsup, nil); err != nil {
				return err
			}
		}
	}
	req := make([]byte, 28)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			return err
		}
		if be.Uint32(req) != nbdRequestMagic {
			return fmt.Errorf("bad request magic")
		}
		typ := be.Uint16(req[6:])
		handle := req[8:16]
		off := int64(be.Uint64(req[16:]))
		n := be.Uint32(req[24:])
		if n > nbdMaxRequestBytes {
			return fmt.Errorf("request of %d bytes", n)
		}
		var payload []byte
		var errno uint32
		switch typ {
		case nbdCmdRead:
			payload = make([]byte, n)
			d.mu.Lock()
			err := d.checkRange(off, int64(n))
			if err == nil {
				err = d.readLayers(len(d.layers), payload, off)
			}
			d.mu.Unlock()
			if err != nil {
				errno, payload = 22, nil // EINVAL
			}
		case nbdCmdWrite:
			buf := make([]byte, n)
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
			if err := write(buf, off); err != nil {
				errno = 5 // EIO
			}
		case nbdCmdFlush:
		case nbdCmdDisc:
			return io.EOF
		default:
			errno = 22
		}
		out := make([]byte, 16, 16+len(payload))
		be.PutUint32(out, nbdReplyMagic)
		be.PutUint32(out[4:], errno)
		copy(out[8:], handle)
		out = append(out, payload...)
		if _, err := c.Write(out); err != nil {
			return err
		}
	}
}
