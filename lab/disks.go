package main

// Disk model of the lab: redirect-on-write layers plus block-granular change tracking.
//
// A disk is a stack of layers. Layer 0 is the VM's flat file on the datastore folder
// (<name>-flat.vmdk, sparse, the size of the capacity). Each snapshot freezes the layers
// below it and starts a new delta layer (a sparse file under the lab dir plus a block map)
// that receives the guest writes made after it, as VMware's redirect-on-write deltas do.
// The view of snapshot j (0-based in the chain) is layers[0..j]; the live disk is all layers.
// Removing a snapshot merges the layer above it down (consolidation), so the work is
// proportional to the data written, never to the disk size.

import (
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

const blockSize = 64 * 1024

type bitset []uint64

func newBitset(n int64) bitset    { return make(bitset, (n+63)/64) }
func (b bitset) has(i int64) bool { return b[i/64]&(1<<(uint(i)%64)) != 0 }
func (b bitset) set(i int64)      { b[i/64] |= 1 << (uint(i) % 64) }
func (b bitset) or(o bitset) {
	for i := range b {
		b[i] |= o[i]
	}
}
func (b bitset) clone() bitset { c := make(bitset, len(b)); copy(c, b); return c }

type layer struct {
	path string
	f    *os.File
	have bitset // nil for the base layer: it holds every block
}

// cbtState is the change tracking of one disk, in the shape of VMware's: a UUID that
// changes on a reset, a sequence number per snapshot, and the blocks changed between
// consecutive snapshots. Enabled on a running VM, it tracks nothing until a stun (cbt.go).
type cbtState struct {
	uuid    string
	seq     int
	active  bool
	pending bitset         // changed since the last snapshot
	epochs  map[int]bitset // epochs[k]: changed between snapshot seq k-1 and seq k
}

type disk struct {
	mu       sync.Mutex
	key      int32
	capacity int64
	blocks   int64
	baseName string // datastore path of the base descriptor, "[ds] vm/vm.vmdk"
	flatRel  string // base flat path relative to the datastore root
	deltaDir string
	layers   []*layer
	cbt      *cbtState
	bus      int32
	unit     int32
	meta     *diskMeta // datastore placement and delta format (deltas.go)
}

func openDisk(key int32, capacity int64, flatAbs, flatRel, baseName, deltaDir string) (*disk, error) {
	f, err := os.OpenFile(flatAbs, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(capacity); err != nil {
		f.Close()
		return nil, err
	}
	return &disk{key: key, capacity: capacity, blocks: (capacity + blockSize - 1) / blockSize,
		baseName: baseName, flatRel: flatRel, deltaDir: deltaDir,
		layers: []*layer{{path: flatAbs, f: f}}}, nil
}

// readLayers reads [off, off+len(p)) of the view made of layers[0..n-1].
func (d *disk) readLayers(n int, p []byte, off int64) error {
	for len(p) > 0 {
		blk := off / blockSize
		end := (blk + 1) * blockSize
		if end > d.capacity {
			end = d.capacity
		}
		chunk := int64(len(p))
		if off+chunk > end {
			chunk = end - off
		}
		src := d.layers[0]
		for i := n - 1; i >= 1; i-- {
			if d.layers[i].have.has(blk) {
				src = d.layers[i]
				break
			}
		}
		if _, err := src.f.ReadAt(p[:chunk], off); err != nil && err != io.EOF {
			return err
		}
		p = p[chunk:]
		off += chunk
	}
	return nil
}

func (d *disk) checkRange(off, length int64) error {
	if off < 0 || length < 0 || off+length > d.capacity {
		return fmt.Errorf("range %d+%d is outside the disk (capacity %d)", off, length, d.capacity)
	}
	return nil
}

// write plays a guest write onto the live disk (the top layer).
func (d *disk) write(p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	top := len(d.layers) - 1
	t := d.layers[top]
	first, last := off/blockSize, (off+int64(len(p))-1)/blockSize
	if len(p) == 0 {
		return nil
	}
	if top > 0 {
		// A block is copied up whole before a partial write, so the layer's block map stays exact.
		buf := make([]byte, blockSize)
		for b := first; b <= last; b++ {
			if t.have.has(b) {
				continue
			}
			bs, be := b*blockSize, (b+1)*blockSize
			if be > d.capacity {
				be = d.capacity
			}
			if off <= bs && off+int64(len(p)) >= be {
				t.have.set(b)
				continue
			}
			if err := d.readLayers(top, buf[:be-bs], bs); err != nil {
				return err
			}
			if _, err := t.f.WriteAt(buf[:be-bs], bs); err != nil {
				return err
			}
			t.have.set(b)
		}
	}
	if _, err := t.f.WriteAt(p, off); err != nil {
		return err
	}
	if d.cbt != nil && d.cbt.active {
		for b := first; b <= last; b++ {
			d.cbt.pending.set(b)
		}
	}
	return nil
}

// pushLayer freezes the current top for a new snapshot.
func (d *disk) pushLayer() error {
	n := len(d.layers)
	p := fmt.Sprintf("%s/disk%d-layer%d.raw", d.deltaDir, d.key, n)
	if err := os.MkdirAll(d.deltaDir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(d.capacity); err != nil {
		f.Close()
		return err
	}
	d.layers = append(d.layers, &layer{path: p, f: f, have: newBitset(d.blocks)})
	return nil
}

// mergeDown merges layer i (>= 1) into layer i-1 and drops it.
func (d *disk) mergeDown(i int) error {
	src, dst := d.layers[i], d.layers[i-1]
	buf := make([]byte, blockSize)
	for b := int64(0); b < d.blocks; b++ {
		if !src.have.has(b) {
			continue
		}
		bs, be := b*blockSize, (b+1)*blockSize
		if be > d.capacity {
			be = d.capacity
		}
		if _, err := src.f.ReadAt(buf[:be-bs], bs); err != nil && err != io.EOF {
			return err
		}
		if _, err := dst.f.WriteAt(buf[:be-bs], bs); err != nil {
			return err
		}
		if dst.have != nil {
			dst.have.set(b)
		}
	}
	src.f.Close()
	os.Remove(src.path)
	d.layers = append(d.layers[:i], d.layers[i+1:]...)
	return nil
}

// allocated returns the blocks holding data in the view layers[0..n-1]: the base file's
// data extents (SEEK_DATA/SEEK_HOLE) plus every block a delta layer holds.
func (d *disk) allocated(n int) (bitset, error) {
	out := newBitset(d.blocks)
	fd := int(d.layers[0].f.Fd())
	var off int64
	for off < d.capacity {
		data, err := syscall.Seek(fd, off, 3 /* SEEK_DATA */)
		if err != nil {
			break // ENXIO: no more data
		}
		hole, err := syscall.Seek(fd, data, 4 /* SEEK_HOLE */)
		if err != nil || hole > d.capacity {
			hole = d.capacity
		}
		for b := data / blockSize; b*blockSize < hole; b++ {
			out.set(b)
		}
		off = hole
	}
	for i := 1; i < n; i++ {
		out.or(d.layers[i].have)
	}
	return out, nil
}

func (d *disk) close() {
	for _, l := range d.layers {
		l.f.Close()
	}
}

// viewReader is an io.ReaderAt over a snapshot's view, for http.ServeContent.
type viewReader struct {
	d    *disk
	n    func() (int, bool) // current layer count of the view, false when the snapshot is gone
	lock *sync.Mutex        // the lab's lock, taken before the disk's (lock order lab -> disk)
}

func (v *viewReader) ReadAt(p []byte, off int64) (int, error) {
	v.lock.Lock()
	defer v.lock.Unlock()
	v.d.mu.Lock()
	defer v.d.mu.Unlock()
	n, ok := v.n()
	if !ok {
		return 0, fmt.Errorf("the snapshot was removed")
	}
	if off >= v.d.capacity {
		return 0, io.EOF
	}
	want := len(p)
	if off+int64(want) > v.d.capacity {
		want = int(v.d.capacity - off)
	}
	if err := v.d.readLayers(n, p[:want], off); err != nil {
		return 0, err
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}
