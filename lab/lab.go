package main

// The lab's own state beside the simulator: per VM its disks and snapshot chain, the
// session cookies the front has seen, the armed faults and delays, the NBD exports.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type labSnap struct {
	ref       string
	name      string
	changeIds map[int32]string
}

type labVM struct {
	name  string
	ref   string
	disks []*disk
	snaps []*labSnap
}

type labPage struct {
	objs [][]byte
	size int
}

type nbdExport struct {
	cmd  *exec.Cmd
	uri  string
	port int
}

type lab struct {
	mu        sync.Mutex
	dir       string
	dsName    string
	dcName    string
	dsDir     string
	token     string
	frontURL  string
	certFile  string
	vmsByRef  map[string]*labVM
	vmsByName map[string]*labVM
	order     []*labVM
	snapOwner map[string]*labVM
	cookies   map[string]bool
	faults    map[string]int
	delays    map[string]int
	nbd       map[string]*nbdExport
	pages     map[string]labPage // RetrievePropertiesEx continuation tokens
}

func newLab(dir string) *lab {
	return &lab{dir: dir, token: randHex(16), vmsByRef: map[string]*labVM{}, vmsByName: map[string]*labVM{},
		snapOwner: map[string]*labVM{}, cookies: map[string]bool{}, faults: map[string]int{},
		delays: map[string]int{}, nbd: map[string]*nbdExport{}, pages: map[string]labPage{}}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newUUID() string {
	h := randHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// deltaName is the descriptor name VMware gives the j-th delta of a disk: vm.vmdk -> vm-00000j.vmdk.
func deltaName(base string, j int) string {
	if j == 0 {
		return base
	}
	return strings.TrimSuffix(base, ".vmdk") + fmt.Sprintf("-%06d.vmdk", j)
}

func simVM(ref string) *simulator.VirtualMachine {
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: ref})
	vm, _ := obj.(*simulator.VirtualMachine)
	return vm
}

func (v *labVM) disk(key int32) *disk {
	for _, d := range v.disks {
		if d.key == key {
			return d
		}
	}
	return nil
}

func (v *labVM) snapIndex(ref string) int {
	for i, s := range v.snaps {
		if s.ref == ref {
			return i
		}
	}
	return -1
}

// syncTracking makes each disk's change tracking follow the VM's configuration, as ESXi does:
// changeTrackingEnabled, extraConfig ctkEnabled = TRUE and scsiX:Y.ctkEnabled = TRUE for the disk.
func (l *lab) syncTracking(v *labVM) {
	vm := simVM(v.ref)
	if vm == nil {
		return
	}
	var on, running bool
	extra := map[string]string{}
	simulator.Map.WithLock(vm, func() {
		on = vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
		running = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
		for _, o := range vm.Config.ExtraConfig {
			ov := o.GetOptionValue()
			if s, ok := ov.Value.(string); ok {
				extra[strings.ToLower(ov.Key)] = strings.ToUpper(s)
			}
		}
	})
	on = on && extra["ctkenabled"] == "TRUE"
	for _, d := range v.disks {
		diskOn := on && extra[fmt.Sprintf("scsi%d:%d.ctkenabled", d.bus, d.unit)] == "TRUE"
		d.mu.Lock()
		if diskOn && d.cbt == nil {
			d.cbt = newTracking(d, !running)
		} else if !diskOn {
			d.cbt = nil
		}
		d.mu.Unlock()
	}
}

func (l *lab) resetCBT(v *labVM, key int32) error {
	d := v.disk(key)
	if d == nil {
		return fmt.Errorf("VM %s has no disk %d", v.name, key)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cbt == nil {
		return fmt.Errorf("change tracking is off on VM %s", v.name)
	}
	d.cbt = newTracking(d, true)
	return nil
}

func cloneDisk(dev *types.VirtualDisk) *types.VirtualDisk {
	c := *dev
	if b, ok := dev.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
		bc := *b
		c.Backing = &bc
	}
	return &c
}

// afterSnapshotCreated runs once the simulator has made snapshot snapRef of VM v: freeze
// the disks (new delta layers), cut a change-tracking epoch, and give the snapshot its own
// copy of the device list with the base or delta file names and the new changeIds.
func (l *lab) afterSnapshotCreated(v *labVM, snapRef, name string) error {
	l.syncTracking(v)
	j := len(v.snaps)
	s := &labSnap{ref: snapRef, name: name, changeIds: map[int32]string{}}
	for _, d := range v.disks {
		d.mu.Lock()
		if err := d.pushLayer(); err != nil {
			d.mu.Unlock()
			return err
		}
		if id := d.cutEpoch(); id != "" {
			s.changeIds[d.key] = id
		}
		d.mu.Unlock()
	}
	v.snaps = append(v.snaps, s)
	l.snapOwner[snapRef] = v
	snapObj, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapRef}).(*simulator.VirtualMachineSnapshot)
	if snapObj == nil {
		return fmt.Errorf("snapshot %s not found in the simulator", snapRef)
	}
	simulator.Map.WithLock(snapObj, func() {
		var devs []types.BaseVirtualDevice
		for _, dev := range snapObj.Config.Hardware.Device {
			if vd, ok := dev.(*types.VirtualDisk); ok {
				c := cloneDisk(vd)
				if b, ok := c.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					if d := v.disk(c.Key); d != nil {
						l.setChain(b, d, j)
					}
					b.ChangeId = s.changeIds[c.Key]
				}
				devs = append(devs, c)
				continue
			}
			devs = append(devs, dev)
		}
		snapObj.Config.Hardware.Device = devs
	})
	l.renameLive(v)
	l.publishVddkMap()
	return nil
}

// renameLive points the VM's live disk backings at the top delta, as vSphere does.
func (l *lab) renameLive(v *labVM) {
	vm := simVM(v.ref)
	if vm == nil {
		return
	}
	simulator.Map.WithLock(vm, func() {
		for i, dev := range vm.Config.Hardware.Device {
			vd, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			d := v.disk(vd.Key)
			if d == nil {
				continue
			}
			c := cloneDisk(vd)
			if b, ok := c.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				l.setChain(b, d, len(v.snaps))
				if d.cbt != nil && d.cbt.active && d.cbt.seq > 0 {
					b.ChangeId = d.cbt.changeID()
				} else {
					b.ChangeId = ""
				}
			}
			vm.Config.Hardware.Device[i] = c
		}
	})
	l.refreshFiles(v)
}

// afterSnapshotRemoved consolidates: the layer above the removed snapshot merges down.
func (l *lab) afterSnapshotRemoved(v *labVM, snapRef string, removeChildren bool) error {
	idx := v.snapIndex(snapRef)
	if idx < 0 {
		return nil
	}
	last := idx
	if removeChildren {
		last = len(v.snaps) - 1
	}
	for k := last; k >= idx; k-- {
		for _, d := range v.disks {
			d.mu.Lock()
			err := d.mergeDown(k + 1)
			d.mu.Unlock()
			if err != nil {
				return err
			}
		}
		l.stopExports(v.snaps[k].ref)
		delete(l.snapOwner, v.snaps[k].ref)
		v.snaps = append(v.snaps[:k], v.snaps[k+1:]...)
	}
	// Later snapshots moved down the chain: their disk files are renamed as consolidation does.
	for i, s := range v.snaps {
		snapObj, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s.ref}).(*simulator.VirtualMachineSnapshot)
		if snapObj == nil {
			continue
		}
		simulator.Map.WithLock(snapObj, func() {
			for _, dev := range snapObj.Config.Hardware.Device {
				if vd, ok := dev.(*types.VirtualDisk); ok {
					if b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
						if d := v.disk(vd.Key); d != nil {
							l.setChain(b, d, i)
						}
					}
				}
			}
		})
	}
	l.stun(v)
	l.renameLive(v)
	l.publishVddkMap()
	return nil
}

// normalizeExtraConfig makes extraConfig behave like vCenter's: one entry per key, the last
// value set wins, an empty value removes the key (the simulator only appends).
func normalizeExtraConfig(ref string) {
	vm := simVM(ref)
	if vm == nil {
		return
	}
	simulator.Map.WithLock(vm, func() {
		idx := map[string]int{}
		var out []types.BaseOptionValue
		for _, o := range vm.Config.ExtraConfig {
			ov := o.GetOptionValue()
			if i, ok := idx[ov.Key]; ok {
				out[i] = o
			} else {
				idx[ov.Key] = len(out)
				out = append(out, o)
			}
		}
		var kept []types.BaseOptionValue
		for _, o := range out {
			if s, ok := o.GetOptionValue().Value.(string); ok && s == "" {
				continue
			}
			kept = append(kept, o)
		}
		vm.Config.ExtraConfig = kept
	})
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startExport serves a snapshot disk over NBD with nbdkit: the file plugin on the frozen base
// for the first snapshot of the chain, the curl plugin over the lab's view endpoint otherwise.
func (l *lab) startExport(v *labVM, snapRef string, key int32) (*nbdExport, error) {
	id := snapRef + "/" + strconv.Itoa(int(key))
	if e, ok := l.nbd[id]; ok {
		return e, nil
	}
	idx := v.snapIndex(snapRef)
	d := v.disk(key)
	if idx < 0 || d == nil {
		return nil, fmt.Errorf("no snapshot %s with disk %d on VM %s", snapRef, key, v.name)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	args := []string{"--readonly", "--exit-with-parent", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port)}
	if idx == 0 {
		args = append(args, "file", "file="+d.layers[0].path)
	} else {
		u := fmt.Sprintf("%s/lab/view?vm=%s&snapshot=%s&disk=%d", l.frontURL, v.name, snapRef, key)
		args = append(args, "curl", "url="+u, "cainfo="+l.certFile, "header=X-Lab-Token: "+l.token)
	}
	cmd := exec.Command("nbdkit", args...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start nbdkit: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("nbdkit did not listen on port %d", port)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e := &nbdExport{cmd: cmd, port: port, uri: fmt.Sprintf("nbd://127.0.0.1:%d", port)}
	l.nbd[id] = e
	go func() { _ = cmd.Wait() }()
	return e, nil
}

func (l *lab) stopExports(snapRef string) {
	for id, e := range l.nbd {
		if strings.HasPrefix(id, snapRef+"/") {
			_ = e.cmd.Process.Kill()
			delete(l.nbd, id)
		}
	}
}

func (l *lab) stopAllExports() {
	for id, e := range l.nbd {
		_ = e.cmd.Process.Kill()
		delete(l.nbd, id)
	}
}

// diskInfoOf is what lab.json and the disk-add answer say of a lab disk.
func (l *lab) diskInfoOf(d *disk) diskInfo {
	return diskInfo{Key: d.key, File: d.baseName, FlatPath: d.layers[0].path, DsPath: d.flatRel, Capacity: d.capacity, Bus: d.bus, Unit: d.unit, Ds: l.metaOf(d).dsName}
}

// removeDisk detaches disk key from VM v, as a ReconfigVM_Task deviceChange remove without
// destroying the file: the device leaves the VM's config and the lab stops serving it.
func (l *lab) removeDisk(v *labVM, key int32) error {
	if len(v.snaps) > 0 {
		return fmt.Errorf("VM %s has snapshots; the lab changes disks only without them", v.name)
	}
	d := v.disk(key)
	if d == nil {
		return fmt.Errorf("VM %s has no disk %d", v.name, key)
	}
	vm := simVM(v.ref)
	if vm == nil {
		return fmt.Errorf("VM %s is not in the simulator", v.name)
	}
	simulator.Map.WithLock(vm, func() {
		var devs []types.BaseVirtualDevice
		for _, dev := range vm.Config.Hardware.Device {
			if vd, ok := dev.(*types.VirtualDisk); ok && vd.Key == key {
				continue
			}
			devs = append(devs, dev)
		}
		vm.Config.Hardware.Device = devs
	})
	for i, x := range v.disks {
		if x == d {
			v.disks = append(v.disks[:i], v.disks[i+1:]...)
			break
		}
	}
	d.mu.Lock()
	d.close()
	d.mu.Unlock()
	l.rebuildLayout(v)
	return nil
}

// addDisk attaches a new disk of capacity bytes with device key to VM v, on the SCSI controller
// the key names (key = 2000 + 16*bus + unit), with a fresh backing UUID and a new file filled
// with data, as a ReconfigVM_Task deviceChange add (fileOperation create) does. When change
// tracking is on for the VM, it is turned on for the new disk too.
func (l *lab) addDisk(v *labVM, key int32, capacity int64) (*disk, error) {
	if len(v.snaps) > 0 {
		return nil, fmt.Errorf("VM %s has snapshots; the lab changes disks only without them", v.name)
	}
	if v.disk(key) != nil {
		return nil, fmt.Errorf("VM %s already has a disk %d", v.name, key)
	}
	if key < 2000 || capacity <= 0 || capacity%blockSize != 0 {
		return nil, fmt.Errorf("a disk needs a key from 2000 up and a capacity that is a positive multiple of %d", blockSize)
	}
	bus, unit := (key-2000)/16, (key-2000)%16
	vm := simVM(v.ref)
	if vm == nil {
		return nil, fmt.Errorf("VM %s is not in the simulator", v.name)
	}
	var ctrl *types.VirtualDevice
	var cbtOn bool
	var dsRef *types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		for _, dev := range vm.Config.Hardware.Device {
			if vd, ok := dev.(*types.VirtualDisk); ok && dsRef == nil {
				if b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					dsRef = b.Datastore
				}
			}
			if sc, ok := dev.(types.BaseVirtualSCSIController); ok && sc.GetVirtualSCSIController().BusNumber == bus {
				ctrl = dev.GetVirtualDevice()
			}
		}
		cbtOn = vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	})
	if ctrl == nil {
		return nil, fmt.Errorf("VM %s has no SCSI controller on bus %d", v.name, bus)
	}
	tag := randHex(4)
	file := fmt.Sprintf("[%s] %s/%s_%s.vmdk", l.dsName, v.name, v.name, tag)
	flatRel := fmt.Sprintf("%s/%s_%s-flat.vmdk", v.name, v.name, tag)
	d, err := openDisk(key, capacity, filepath.Join(l.dsDir, flatRel), flatRel, file, filepath.Join(l.dir, "deltas", v.name))
	if err != nil {
		return nil, err
	}
	d.bus, d.unit = bus, unit
	if err := fillDisk(d, v.name+"/"+tag, true); err != nil {
		d.close()
		return nil, err
	}
	u := unit
	dev := &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{Key: key, ControllerKey: ctrl.Key, UnitNumber: &u,
			DeviceInfo: &types.Description{Label: fmt.Sprintf("Hard disk %d", len(v.disks)+1), Summary: fmt.Sprintf("%d KB", capacity/1024)},
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file, Datastore: dsRef},
				DiskMode:                     string(types.VirtualDiskModePersistent), ThinProvisioned: types.NewBool(true), Uuid: newUUID(),
			}},
		CapacityInKB: capacity / 1024, CapacityInBytes: capacity,
	}
	simulator.Map.WithLock(vm, func() {
		vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, dev)
		if cbtOn {
			vm.Config.ExtraConfig = append(vm.Config.ExtraConfig, &types.OptionValue{Key: fmt.Sprintf("scsi%d:%d.ctkEnabled", bus, unit), Value: "TRUE"})
		}
	})
	v.disks = append(v.disks, d)
	l.syncTracking(v)
	d.stunTracking() // a hot-added disk is opened with its ctk file: tracked from the start
	l.renameLive(v)
	return d, nil
}
