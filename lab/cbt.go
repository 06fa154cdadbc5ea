package main

// Change tracking as ESXi and vCenter do it, where a client can tell:
//   - changeIds look like vCenter's: 16 hex bytes with spaces and a dash, then /sequence
//     ("52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/3"); a reset gives a new UUID part.
//   - Enabled by ReconfigVM on a powered-on VM, tracking starts at the next stun: a snapshot
//     create or remove, a power operation. The snapshot whose creation is that stun carries no
//     changeId. Enabled on a powered-off VM, it is active at once (ESXi opens the ctk file
//     with the disk at the next power-on or snapshot; nothing writes to the disk before).
//   - QueryChangedDiskAreas answers runs of dirty 64 KiB blocks (coalesced, so 64 KiB up to
//     many MiB), at most maxAreasPerCall areas per reply; in the "whole-disk" mode (lab
//     control cbt-mode, as vCenter does on some non-VMFS storage) one area covering the disk.
//   - Its faults: tracking off or not active at the snapshot: InvalidArgument on startOffset
//     (vSphere 7.0U3 and later); a snapshot that is not (or no longer) the VM's: NotFound, as
//     the API reference lists it; a changeId of another epoch or disk: InvalidArgument on changeId.

import (
	"crypto/rand"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

const maxAreasPerCall = 2000

// Area modes of QueryChangedDiskAreas per disk (lab control cbt-mode); absent = "runs".
const (
	cbtModeRuns      = "runs"
	cbtModeWholeDisk = "whole-disk"
)

var cbtModes = map[*disk]string{} // guarded by lab.mu

// newChangeUUID is the UUID part of a changeId as vCenter writes it.
func newChangeUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] = 0x52 // VMware-generated UUIDs start so
	var sb strings.Builder
	for i, x := range b {
		switch {
		case i == 8:
			sb.WriteByte('-')
		case i > 0:
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%02x", x)
	}
	return sb.String()
}

func newTracking(d *disk, active bool) *cbtState {
	return &cbtState{uuid: newChangeUUID(), pending: newBitset(d.blocks), epochs: map[int]bitset{}, active: active}
}

func (c *cbtState) changeID() string { return fmt.Sprintf("%s/%d", c.uuid, c.seq) }

// stunTracking starts tracking that waits for a stun; what was written before is not tracked.
// The caller holds d.mu.
func (d *disk) stunTracking() {
	if d.cbt != nil && !d.cbt.active {
		d.cbt.active = true
		d.cbt.pending = newBitset(d.blocks)
	}
}

// cutEpoch runs at a snapshot (d.mu held): it returns the snapshot's changeId, or "" when
// tracking is off or was not active yet; in that case this snapshot's stun activates it.
func (d *disk) cutEpoch() string {
	if d.cbt == nil {
		return ""
	}
	if !d.cbt.active {
		d.stunTracking()
		return ""
	}
	d.cbt.seq++
	d.cbt.epochs[d.cbt.seq] = d.cbt.pending
	d.cbt.pending = newBitset(d.blocks)
	return d.cbt.changeID()
}

// stun is a stun/unstun of VM v (snapshot removal, power operation): pending tracking starts.
func (l *lab) stun(v *labVM) {
	for _, d := range v.disks {
		d.mu.Lock()
		d.stunTracking()
		d.mu.Unlock()
	}
}

func badParam(w http.ResponseWriter, name string) {
	writeFault(w, "InvalidArgument", "A specified parameter was not correct: "+name, "<invalidProperty>"+name+"</invalidProperty>")
}

func (f *front) queryChangedDiskAreas(w http.ResponseWriter, body []byte) {
	l := f.l
	this, _ := field(body, "_this")
	snapRef, _ := field(body, "snapshot")
	keyS, _ := field(body, "deviceKey")
	startS, _ := field(body, "startOffset")
	changeId, _ := field(body, "changeId")
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vmsByRef[this]
	if v == nil {
		writeFault(w, "ManagedObjectNotFound", "The object has already been deleted or has not been completely created", fmt.Sprintf(`<obj type="VirtualMachine">%s</obj>`, html.EscapeString(this)))
		return
	}
	idx := v.snapIndex(snapRef)
	if idx < 0 {
		writeFault(w, "NotFound", "The object or item referred to could not be found.", "")
		return
	}
	key, _ := strconv.Atoi(keyS)
	d := v.disk(int32(key))
	if d == nil {
		badParam(w, "deviceKey")
		return
	}
	start, err := strconv.ParseInt(startS, 10, 64)
	d.mu.Lock()
	defer d.mu.Unlock()
	snapId := v.snaps[idx].changeIds[d.key]
	if d.cbt == nil || snapId == "" || err != nil || start < 0 || start >= d.capacity {
		badParam(w, "startOffset")
		return
	}
	var set bitset
	if changeId == "*" {
		set, _ = d.allocated(idx + 1)
	} else {
		snapSeq, _ := strconv.Atoi(snapId[strings.LastIndex(snapId, "/")+1:])
		slash := strings.LastIndex(changeId, "/")
		seq, perr := strconv.Atoi(changeId[slash+1:])
		if slash < 0 || perr != nil || changeId[:slash] != d.cbt.uuid || !strings.HasPrefix(snapId, d.cbt.uuid+"/") || seq > snapSeq || seq < 0 {
			badParam(w, "changeId")
			return
		}
		set = newBitset(d.blocks)
		for k := seq + 1; k <= snapSeq; k++ {
			e, ok := d.cbt.epochs[k]
			if !ok {
				badParam(w, "changeId")
				return
			}
			set.or(e)
		}
	}
	var sb strings.Builder
	end := d.capacity
	if cbtModes[d] == cbtModeWholeDisk {
		fmt.Fprintf(&sb, `<changedArea><start>%d</start><length>%d</length></changedArea>`, start, d.capacity-start)
	} else {
		end = changedRuns(&sb, set, d, start)
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write(envelope(fmt.Sprintf(`<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse>`,
		start, end-start, sb.String())))
}

// changedRuns writes the runs of set blocks from start on, at most maxAreasPerCall of them, and
// returns where the reply's coverage ends (the capacity, or the start of the first run left out).
func changedRuns(sb *strings.Builder, set bitset, d *disk, start int64) int64 {
	n := 0
	for b := start / blockSize; b < d.blocks; {
		if !set.has(b) {
			b++
			continue
		}
		if n == maxAreasPerCall {
			return b * blockSize
		}
		e := b
		for e < d.blocks && set.has(e) {
			e++
		}
		as, ae := b*blockSize, e*blockSize
		if as < start {
			as = start
		}
		if ae > d.capacity {
			ae = d.capacity
		}
		fmt.Fprintf(sb, `<changedArea><start>%d</start><length>%d</length></changedArea>`, as, ae-as)
		n++
		b = e
	}
	return d.capacity
}

// serveCbtMode is the lab control cbt-mode?vm=&mode=runs|whole-disk[&disk=KEY]: how the VM's
// disks (or one disk) answer QueryChangedDiskAreas from now on.
func (f *front) serveCbtMode(w http.ResponseWriter, q url.Values) {
	l := f.l
	mode := q.Get("mode")
	if mode != cbtModeRuns && mode != cbtModeWholeDisk {
		http.Error(w, fmt.Sprintf("mode must be %s or %s, not %q", cbtModeRuns, cbtModeWholeDisk, mode), http.StatusBadRequest)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.requestVM(w, q)
	if v == nil {
		return
	}
	disks := v.disks
	if ks := q.Get("disk"); ks != "" {
		key, _ := strconv.Atoi(ks)
		d := v.disk(int32(key))
		if d == nil {
			http.Error(w, fmt.Sprintf("VM %s has no disk with key %q", v.name, ks), http.StatusBadRequest)
			return
		}
		disks = []*disk{d}
	}
	for _, d := range disks {
		if mode == cbtModeRuns {
			delete(cbtModes, d)
		} else {
			cbtModes[d] = mode
		}
	}
	writeJSON(w, map[string]interface{}{"vm": v.name, "mode": mode, "disks": len(disks)})
}

// requestVM is the VM a lab control request names (?vm=NAME), or nil after answering 400.
// The caller holds l.mu.
func (l *lab) requestVM(w http.ResponseWriter, q url.Values) *labVM {
	v := l.vmsByName[q.Get("vm")]
	if v == nil {
		http.Error(w, fmt.Sprintf("unknown VM %q", q.Get("vm")), http.StatusBadRequest)
	}
	return v
}
