package main

// Delta disks as vSphere shows them. The lab's redirect-on-write layers (disks.go) are the chain
// levels of a disk: level 0 is the base disk, level j >= 1 the delta made by the j-th snapshot of
// the chain (<base>-00000j.vmdk, parent level j-1), the top level the VM's live backing. This file
// gives each level what a datastore and the vSphere API hold for it: the backing (fileName,
// parent, deltaDiskFormat, backingObjectId), a text descriptor on the datastore, an extent file
// (<base>-flat.vmdk for the base, -00000j-sesparse.vmdk or -00000j-delta.vmdk for a delta, none on
// vSAN), and the VM's layoutEx.

import (
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ESXi picks the delta format from the datastore: SEsparse for every delta on VMFS-6; on VMFS-5,
// SEsparse for disks of 2 TiB and more and VMFSsparse (redoLogFormat) below (vSphere Storage guide,
// "Snapshot Formats"). vSAN deltas are vsanSparse: redoLogFormat, variant vsanSparseVariant.
var vmfsVersion = flag.Int("vmfs-version", 6, "VMFS version LocalDS_0 presents (5 or 6): picks the snapshot delta format as ESXi does")

const seSparseThreshold = int64(2) << 40

// diskMeta is where a lab disk lives and how its deltas look.
type diskMeta struct {
	dsName   string // datastore name, "LocalDS_0" or "vsanDatastore"
	dsDir    string // absolute datastore root
	vsan     bool
	objects  []string // vSAN object UUID per chain level
	format   string   // deltaDiskFormat of its deltas
	variant  string   // deltaDiskFormatVariant of its deltas
	uuidBase string   // seed of the descriptors' CIDs
}

func deltaFormat(vmfs int, capacity int64, vsan bool) (format, variant string) {
	switch {
	case vsan:
		return string(types.VirtualDiskDeltaDiskFormatRedoLogFormat), string(types.VirtualDiskDeltaDiskFormatVariantVsanSparseVariant)
	case vmfs >= 6 || capacity >= seSparseThreshold:
		return string(types.VirtualDiskDeltaDiskFormatSeSparseFormat), ""
	default:
		return string(types.VirtualDiskDeltaDiskFormatRedoLogFormat), string(types.VirtualDiskDeltaDiskFormatVariantVmfsSparseVariant)
	}
}

// metaOf gives a disk its placement facts (once; disks on LocalDS_0 unless told otherwise).
func (l *lab) metaOf(d *disk) *diskMeta {
	if d.meta == nil {
		f, v := deltaFormat(*vmfsVersion, d.capacity, false)
		d.meta = &diskMeta{dsName: l.dsName, dsDir: l.dsDir, format: f, variant: v, uuidBase: newUUID()}
	}
	return d.meta
}

// relOf is the datastore-relative path of a "[ds] dir/file.vmdk" name.
func relOf(name string) string { return name[strings.Index(name, "] ")+2:] }

// extentName is the extent file of chain level j of a disk ("" on vSAN: the data is an object).
func (m *diskMeta) extentName(base string, j int) string {
	if m.vsan {
		return ""
	}
	stem := strings.TrimSuffix(deltaName(base, j), ".vmdk")
	switch {
	case j == 0:
		return stem + "-flat.vmdk"
	case m.format == string(types.VirtualDiskDeltaDiskFormatSeSparseFormat):
		return stem + "-sesparse.vmdk"
	default:
		return stem + "-delta.vmdk"
	}
}

func (m *diskMeta) objectID(j int) string {
	if !m.vsan {
		return ""
	}
	for len(m.objects) <= j {
		m.objects = append(m.objects, newUUID())
	}
	return m.objects[j]
}

func (m *diskMeta) cid(j int) uint32 {
	return crc32.ChecksumIEEE([]byte(fmt.Sprintf("%s/%d", m.uuidBase, j)))
}

// setChain makes backing b the backing of chain level j of disk d: its file name, and for a delta
// its format and its parent chain down to the base disk. The caller keeps changeId on the top.
func (l *lab) setChain(b *types.VirtualDiskFlatVer2BackingInfo, d *disk, j int) {
	m := l.metaOf(d)
	b.FileName = deltaName(d.baseName, j)
	b.BackingObjectId = m.objectID(j)
	b.Parent = nil
	b.DeltaDiskFormat, b.DeltaDiskFormatVariant, b.DeltaGrainSize = "", "", 0
	if j == 0 {
		return
	}
	b.DeltaDiskFormat, b.DeltaDiskFormatVariant = m.format, m.variant
	if m.format == string(types.VirtualDiskDeltaDiskFormatSeSparseFormat) {
		b.DeltaGrainSize = 8 // sectors: SEsparse's 4 KiB grain
	}
	p := *b
	p.ChangeId = ""
	l.setChain(&p, d, j-1)
	b.Parent = &p
}

// descriptor is the text descriptor of chain level j (VMDK descriptor format: header, extent line, ddb).
func (l *lab) descriptor(d *disk, j int) string {
	m := l.metaOf(d)
	sectors := d.capacity / 512
	parentCID, createType, extent := "ffffffff", "vmfs", ""
	var sb strings.Builder
	switch {
	case m.vsan && j == 0:
		createType, extent = "vsan", fmt.Sprintf(`RW %d VSAN "vsan://%s"`, sectors, m.objectID(0))
	case m.vsan:
		createType, extent = "vsanSparse", fmt.Sprintf(`RW %d VSANSPARSE "vsan://%s"`, sectors, m.objectID(j))
	case j == 0:
		extent = fmt.Sprintf(`RW %d VMFS "%s"`, sectors, path.Base(m.extentName(d.baseName, 0)))
	case m.format == string(types.VirtualDiskDeltaDiskFormatSeSparseFormat):
		createType, extent = "seSparse", fmt.Sprintf(`RW %d SESPARSE "%s"`, sectors, path.Base(m.extentName(d.baseName, j)))
	default:
		createType, extent = "vmfsSparse", fmt.Sprintf(`RW %d VMFSSPARSE "%s"`, sectors, path.Base(m.extentName(d.baseName, j)))
	}
	if j > 0 {
		parentCID = fmt.Sprintf("%08x", m.cid(j-1))
	}
	fmt.Fprintf(&sb, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=%s\ncreateType=\"%s\"\n", m.cid(j), parentCID, createType)
	if j > 0 {
		fmt.Fprintf(&sb, "parentFileNameHint=\"%s\"\n", path.Base(relOf(deltaName(d.baseName, j-1))))
	}
	fmt.Fprintf(&sb, "\n# Extent description\n%s\n\n# The Disk Data Base\n#DDB\n\n", extent)
	if j == 0 {
		cyl := sectors / (255 * 63)
		fmt.Fprintf(&sb, "ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.thinProvisioned = \"1\"\nddb.virtualHWVersion = \"13\"\n", cyl)
	}
	if m.format == string(types.VirtualDiskDeltaDiskFormatSeSparseFormat) && j > 0 {
		sb.WriteString("ddb.grain = \"8\"\n")
	}
	return sb.String()
}

// refreshFiles writes the descriptors of every chain level of v's disks on their datastore, drops
// those of consolidated levels, and rebuilds the disk part of v's layoutEx.
func (l *lab) refreshFiles(v *labVM) {
	for _, d := range v.disks {
		m := l.metaOf(d)
		d.mu.Lock()
		n := len(d.layers)
		d.mu.Unlock()
		for j := 0; j < n; j++ {
			_ = os.WriteFile(filepath.Join(m.dsDir, relOf(deltaName(d.baseName, j))), []byte(l.descriptor(d, j)), 0o644)
		}
		for j := n; ; j++ {
			if os.Remove(filepath.Join(m.dsDir, relOf(deltaName(d.baseName, j)))) != nil {
				break
			}
		}
	}
	l.rebuildLayout(v)
}

func (l *lab) fileSize(m *diskMeta, name string) int64 {
	if fi, err := os.Stat(filepath.Join(m.dsDir, relOf(name))); err == nil {
		return fi.Size()
	}
	return 0
}

// rebuildLayout replaces the disk files and disk chains of v's layoutEx (and of its snapshots'
// layouts) by the lab's chain: per level a descriptor and, off vSAN, its extent, base first.
func (l *lab) rebuildLayout(v *labVM) {
	vm := simVM(v.ref)
	if vm == nil {
		return
	}
	type unit struct {
		desc, ext types.VirtualMachineFileLayoutExFileInfo
	}
	levels := map[int32][]unit{}
	for _, d := range v.disks {
		m := l.metaOf(d)
		d.mu.Lock()
		n := len(d.layers)
		var extSizes []int64
		for j := 0; j < n; j++ {
			if j == 0 {
				extSizes = append(extSizes, d.capacity)
			} else {
				extSizes = append(extSizes, l.deltaExtentSize(d, j))
			}
		}
		d.mu.Unlock()
		for j := 0; j < n; j++ {
			name := deltaName(d.baseName, j)
			u := unit{desc: types.VirtualMachineFileLayoutExFileInfo{Name: name, Type: string(types.VirtualMachineFileLayoutExFileTypeDiskDescriptor),
				Size: l.fileSize(m, name), BackingObjectId: m.objectID(j), Accessible: types.NewBool(true)}}
			if e := m.extentName(d.baseName, j); e != "" {
				u.ext = types.VirtualMachineFileLayoutExFileInfo{Name: e, Type: string(types.VirtualMachineFileLayoutExFileTypeDiskExtent),
					Size: extSizes[j], UniqueSize: extSizes[j], Accessible: types.NewBool(true)}
			}
			u.desc.UniqueSize = u.desc.Size
			levels[d.key] = append(levels[d.key], u)
		}
	}
	simulator.Map.WithLock(vm, func() {
		if vm.LayoutEx == nil {
			vm.LayoutEx = &types.VirtualMachineFileLayoutEx{}
		}
		var files []types.VirtualMachineFileLayoutExFileInfo
		var next int32
		// File keys stay stable and are never reused: the simulator's RemoveSnapshot deletes the
		// files whose keys a snapshot's DataKey/MemoryKey name, so a disk file given a key a snapshot
		// once held would be deleted with that snapshot.
		snapKeys := map[int32]bool{}
		for _, s := range vm.LayoutEx.Snapshot {
			snapKeys[s.DataKey], snapKeys[s.MemoryKey] = true, true
			if s.DataKey >= next {
				next = s.DataKey + 1
			}
			if s.MemoryKey >= next {
				next = s.MemoryKey + 1
			}
		}
		diskKeys := map[string]int32{}
		for _, f := range vm.LayoutEx.File {
			if f.Key >= next {
				next = f.Key + 1
			}
			if f.Type == string(types.VirtualMachineFileLayoutExFileTypeDiskDescriptor) || f.Type == string(types.VirtualMachineFileLayoutExFileTypeDiskExtent) {
				if !snapKeys[f.Key] {
					diskKeys[f.Name] = f.Key
				}
				continue
			}
			files = append(files, f)
		}
		if next <= layoutKeyFloor[v.ref] {
			next = layoutKeyFloor[v.ref] + 1
		}
		chains := map[int32][]types.VirtualMachineFileLayoutExDiskUnit{}
		var keys []int32
		for _, d := range v.disks {
			keys = append(keys, d.key)
			for _, u := range levels[d.key] {
				var fk []int32
				for _, f := range []types.VirtualMachineFileLayoutExFileInfo{u.desc, u.ext} {
					if f.Name == "" {
						continue
					}
					if k, ok := diskKeys[f.Name]; ok {
						f.Key = k
					} else {
						f.Key = next
						next++
					}
					files = append(files, f)
					fk = append(fk, f.Key)
				}
				chains[d.key] = append(chains[d.key], types.VirtualMachineFileLayoutExDiskUnit{FileKey: fk})
			}
		}
		upTo := func(level int) []types.VirtualMachineFileLayoutExDiskLayout {
			var out []types.VirtualMachineFileLayoutExDiskLayout
			for _, k := range keys {
				c := chains[k]
				if level >= 0 && level+1 < len(c) {
					c = c[:level+1]
				}
				out = append(out, types.VirtualMachineFileLayoutExDiskLayout{Key: k, Chain: c})
			}
			return out
		}
		vm.LayoutEx.File = files
		layoutKeyFloor[v.ref] = next - 1
		vm.LayoutEx.Disk = upTo(-1)
		for i := range vm.LayoutEx.Snapshot {
			if idx := v.snapIndex(vm.LayoutEx.Snapshot[i].Key.Value); idx >= 0 {
				vm.LayoutEx.Snapshot[i].Disk = upTo(idx)
			}
		}
		vm.LayoutEx.Timestamp = time.Now()
	})
}

// The extent file of a delta level, as /folder serves it, holding only what the level holds (the
// writes made after its snapshot, in the lab's 64 KiB blocks), in the layout of its format:
//
//   - redoLogFormat (VMFSsparse): the ESX Server sparse extent ("COWD") of VMware's Virtual Disk
//     Format 1.1: a 2048-byte header (magic, version 1, flags 3, numSectors, grainSize, gdOffset,
//     numGDEntries, freeSector, the parent file name, generation, name, description), the grain
//     directory at sector 4 (uint32 sector offsets of the grain tables, 0 = none), grain tables of
//     4096 uint32 grain sector offsets (0 = not in this delta: read the parent), then the 64 KiB grains.
//     qemu-img reads a chain of these (descriptor, parentFileNameHint, base flat) as vSphere would.
//   - seSparseFormat: the SEsparse layout as the format's public descriptions give it (QEMU reads
//     it): a 512-byte constant header (magic 0xcafebabe, version 0x200000001, capacity, grain 8
//     sectors, grain tables of 64 sectors, then the offset and size in sectors of each region), a
//     volatile header (magic 0xcafecafe), the grain directory (uint64; 0x1 in the top nibble and a
//     grain table index below), the grain tables (uint64; 0x3 in the top nibble and the grain index
//     in the rest, 0 = not in this delta), then the 4 KiB grains. Only the grain tables in use are
//     written (the real format reserves all of them); journal, free bitmap and backmap are empty.

const (
	cowdGTEntries   = 4096
	cowdHeaderBytes = 2048
)

func deltaGrains(d *disk, j int) []int64 {
	var g []int64
	have := d.layers[j].have
	for b := int64(0); b < d.blocks; b++ {
		if have.has(b) {
			g = append(g, b)
		}
	}
	return g
}

// cowdMeta is the header, grain directory and grain tables of a COWD sparse extent whose grains
// follow in the order of `grains`.
func cowdMeta(d *disk, grains []int64, parent string, name string) []byte {
	const sector = 512
	grainSectors := int64(blockSize / sector)
	numSectors := d.capacity / sector
	perGT := cowdGTEntries * grainSectors
	numGD := (numSectors + perGT - 1) / perGT
	gdBytes := (numGD*4 + sector - 1) / sector * sector
	var tables []int64 // GD indexes that get a grain table, ascending
	for _, b := range grains {
		gd := b * grainSectors / perGT
		if len(tables) == 0 || tables[len(tables)-1] != gd {
			tables = append(tables, gd)
		}
	}
	metaBytes := cowdHeaderBytes + gdBytes + int64(len(tables))*cowdGTEntries*4
	m := make([]byte, metaBytes)
	le := binary.LittleEndian
	le.PutUint32(m[0:], 0x44574f43) // "COWD"
	le.PutUint32(m[4:], 1)
	le.PutUint32(m[8:], 3)
	le.PutUint32(m[12:], uint32(numSectors))
	le.PutUint32(m[16:], uint32(grainSectors))
	le.PutUint32(m[20:], cowdHeaderBytes/sector)
	le.PutUint32(m[24:], uint32(numGD))
	le.PutUint32(m[28:], uint32((metaBytes+int64(len(grains))*blockSize)/sector))
	copy(m[32:32+1023], parent)  // u.child.parentFileName
	le.PutUint32(m[32+1024:], 1) // parentGeneration
	le.PutUint32(m[1060:], 1)    // generation
	copy(m[1064:1064+59], name)
	copy(m[1124:1124+511], "vmlift lab delta")
	gtStart := int64(cowdHeaderBytes) + gdBytes
	gtAt := map[int64]int64{}
	for i, gd := range tables {
		off := gtStart + int64(i)*cowdGTEntries*4
		gtAt[gd] = off
		le.PutUint32(m[cowdHeaderBytes+4*gd:], uint32(off/sector))
	}
	for i, b := range grains {
		gd := b * grainSectors / perGT
		idx := (b * grainSectors % perGT) / grainSectors
		le.PutUint32(m[gtAt[gd]+4*idx:], uint32((metaBytes+int64(i)*blockSize)/sector))
	}
	return m
}

// seSparseMeta is the headers, grain directory and grain tables of an SEsparse extent whose
// 64 KiB blocks (16 grains each) follow in the order of `blocks`.
func seSparseMeta(d *disk, blocks []int64) []byte {
	const sector = 512
	const grainSectors = 8
	const gtSectors = 64
	const gtEntries = gtSectors * sector / 8
	perBlock := int64(blockSize / (grainSectors * sector))
	capSectors := d.capacity / sector
	numGD := (capSectors + gtEntries*grainSectors - 1) / (gtEntries * grainSectors)
	gdSectors := (numGD*8 + sector - 1) / sector
	var tables []int64 // GD indexes given a grain table, ascending
	for _, b := range blocks {
		gd := b * perBlock / gtEntries
		if len(tables) == 0 || tables[len(tables)-1] != gd {
			tables = append(tables, gd)
		}
	}
	gdOff := int64(2)
	gtOff := gdOff + gdSectors
	grainsOff := gtOff + int64(len(tables))*gtSectors
	m := make([]byte, grainsOff*sector)
	le := binary.LittleEndian
	h := []uint64{0xcafebabe, 0x0000000200000001, uint64(capSectors), grainSectors, gtSectors, 0, 0, 0, 0, 0,
		1, 1, // volatile header
		uint64(gtOff), 0, uint64(gtOff), 0, // journal header, journal: empty
		uint64(gdOff), uint64(gdSectors),
		uint64(gtOff), uint64(len(tables)) * gtSectors,
		uint64(grainsOff), 0, uint64(grainsOff), 0, // free bitmap, backmap: empty
		uint64(grainsOff), uint64(int64(len(blocks)) * perBlock * grainSectors)}
	for i, v := range h {
		le.PutUint64(m[8*i:], v)
	}
	le.PutUint64(m[sector:], 0xcafecafe) // volatile header: free_gt_number, next_txn_seq_number, replay_journal 0
	le.PutUint64(m[sector+8:], uint64(len(tables)))
	le.PutUint64(m[sector+16:], 1)
	gtAt := map[int64]int64{}
	for i, gd := range tables {
		gtAt[gd] = (gtOff + int64(i)*gtSectors) * sector
		le.PutUint64(m[gdOff*sector+8*gd:], 0x1000000000000000|uint64(i))
	}
	for i, b := range blocks {
		for s := int64(0); s < perBlock; s++ {
			g := b*perBlock + s                  // grain number on the disk
			idx := uint64(int64(i)*perBlock + s) // grain index in the grains region
			e := 0x3000000000000000 | (idx&0xfff)<<48 | (idx>>12)&0x0000ffffffffffff
			le.PutUint64(m[gtAt[g/gtEntries]+8*(g%gtEntries):], e)
		}
	}
	return m
}

func (l *lab) extentMeta(d *disk, j int, grains []int64) []byte {
	m := l.metaOf(d)
	if m.format == string(types.VirtualDiskDeltaDiskFormatRedoLogFormat) {
		return cowdMeta(d, grains, path.Base(relOf(deltaName(d.baseName, j-1))), path.Base(m.extentName(d.baseName, j)))
	}
	return seSparseMeta(d, grains)
}

// deltaExtentSize is the size of the extent file of delta level j, without building it (layoutEx).
func (l *lab) deltaExtentSize(d *disk, j int) int64 {
	g := deltaGrains(d, j)
	tables, last := int64(0), int64(-1)
	var meta int64
	if l.metaOf(d).format == string(types.VirtualDiskDeltaDiskFormatRedoLogFormat) {
		per := int64(cowdGTEntries) // blocks per grain table: one 64 KiB grain each
		for _, b := range g {
			if b/per != last {
				tables, last = tables+1, b/per
			}
		}
		numGD := (d.capacity/512 + per*blockSize/512 - 1) / (per * blockSize / 512)
		meta = cowdHeaderBytes + (numGD*4+511)/512*512 + tables*cowdGTEntries*4
	} else {
		per := int64(4096 / (blockSize / 4096)) // blocks per grain table: 4096 grains of 4 KiB
		for _, b := range g {
			if b/per != last {
				tables, last = tables+1, b/per
			}
		}
		numGD := (d.capacity + per*blockSize - 1) / (per * blockSize)
		meta = (2 + (numGD*8+511)/512 + tables*64) * 512
	}
	return meta + int64(len(g))*blockSize
}

type deltaExtentReader struct {
	d      *disk
	layer  *layer
	header []byte
	grains []int64
	start  int64
	size   int64
}

func (l *lab) newDeltaExtentReader(d *disk, j int) *deltaExtentReader {
	g := deltaGrains(d, j)
	h := l.extentMeta(d, j, g)
	return &deltaExtentReader{d: d, layer: d.layers[j], header: h, grains: g, start: int64(len(h)), size: int64(len(h)) + int64(len(g))*blockSize}
}

func (r *deltaExtentReader) ReadAt(p []byte, off int64) (int, error) {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	n := 0
	for n < len(p) && off < r.size {
		var c int
		if off < r.start {
			c = copy(p[n:], r.header[off:])
		} else {
			gi := (off - r.start) / blockSize
			in := (off - r.start) % blockSize
			want := blockSize - in
			if int64(len(p)-n) < want {
				want = int64(len(p) - n)
			}
			buf := p[n : n+int(want)]
			if _, err := r.layer.f.ReadAt(buf, r.grains[gi]*blockSize+in); err != nil && err != io.EOF {
				return n, err
			}
			c = int(want)
		}
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// serveDeltaExtent answers a /folder GET of a delta extent file of a lab disk on datastore ds
// (true when rel named one). The flat extent of a delta does not exist, so it is the simulator's
// 404 like any absent file.
func (f *front) serveDeltaExtent(w http.ResponseWriter, r *http.Request, ds, rel string) bool {
	l := f.l
	l.mu.Lock()
	for _, v := range l.order {
		if len(v.snaps) == 0 {
			continue
		}
		for _, d := range v.disks {
			m := l.metaOf(d)
			if m.dsName != ds {
				continue
			}
			for j := 1; j <= len(v.snaps); j++ {
				if e := m.extentName(d.baseName, j); e != "" && relOf(e) == rel {
					d.mu.Lock()
					rd := l.newDeltaExtentReader(d, j)
					d.mu.Unlock()
					l.mu.Unlock()
					w.Header().Set("Content-Type", "application/octet-stream")
					http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(rd, 0, rd.size))
					return true
				}
			}
		}
	}
	l.mu.Unlock()
	return false
}

// layoutKeyFloor is the highest layoutEx file key rebuildLayout has given per VM (l.mu held), so a
// key freed by a removed file is not handed out again.
var layoutKeyFloor = map[string]int32{}
