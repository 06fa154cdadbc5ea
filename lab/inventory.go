package main

// Inventory behaviour of a real vCenter that the simulator lacks: the PropertyCollector pages
// RetrievePropertiesEx answers even without maxObjects, a property the user may not read comes
// back in missingSet with NoPermission, and ReconfigVM_Task deviceChange adds, removes and moves
// disks on the lab's own disks (the simulator would only change its device list).

import (
	"bytes"
	"fmt"
	"html"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// defaultPageSize is the lab's PropertyCollector policy when a request sets no maxObjects.
const defaultPageSize = 100

type denial struct {
	path      string
	privilege string
}

type inventoryState struct {
	mu       sync.Mutex
	pageSize int                 // objects per RetrievePropertiesEx page without maxObjects; 0: no paging
	denied   map[string][]denial // object ref -> properties answered through missingSet
	dcPath   string              // the datacenter's inventory path (F0/DC0 with -dc-folder)
}

var inv = &inventoryState{pageSize: defaultPageSize, denied: map[string][]denial{}}

var (
	reObjRef   = regexp.MustCompile(`^<objects>\s*<obj type="([^"]+)">([^<]+)</obj>`)
	rePropName = regexp.MustCompile(`^<propSet>\s*<name>([^<]*)</name>`)
)

// dcPathOK: vCenter finds the datacenter of a /folder URL by its inventory path, not by its
// bare name when it sits in a folder (the simulator would accept either).
func dcPathOK(p string) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return p == "" || inv.dcPath == "" || strings.Trim(p, "/") == inv.dcPath
}

// deniedFor is what the lab denies on an object: its own denials and, for a snapshot, its VM's.
func (f *front) deniedFor(typ, ref string) []denial {
	inv.mu.Lock()
	d := append([]denial(nil), inv.denied[ref]...)
	inv.mu.Unlock()
	if typ == "VirtualMachineSnapshot" {
		f.l.mu.Lock()
		v := f.l.snapOwner[ref]
		f.l.mu.Unlock()
		if v != nil {
			inv.mu.Lock()
			d = append(d, inv.denied[v.ref]...)
			inv.mu.Unlock()
		}
	}
	return d
}

func covers(d denial, path string) bool {
	return path == d.path || strings.HasPrefix(path, d.path+".") || strings.HasPrefix(d.path, path+".")
}

// denyProps moves the denied properties of one <objects> element into missingSet, as vCenter
// answers a property the session's user lacks the privilege for.
func (f *front) denyProps(obj []byte) []byte {
	m := reObjRef.FindSubmatch(obj)
	if m == nil {
		return obj
	}
	ds := f.deniedFor(string(m[1]), string(m[2]))
	if len(ds) == 0 {
		return obj
	}
	var keep, missing bytes.Buffer
	rest := obj[len(m[0]):]
	keep.Write(m[0])
	for {
		i := bytes.Index(rest, []byte("<propSet>"))
		if i < 0 {
			break
		}
		j := bytes.Index(rest[i:], []byte("</propSet>"))
		if j < 0 {
			break
		}
		keep.Write(rest[:i])
		ps := rest[i : i+j+len("</propSet>")]
		rest = rest[i+j+len("</propSet>"):]
		nm := rePropName.FindSubmatch(ps)
		var hit *denial
		for k := range ds {
			if nm != nil && covers(ds[k], string(nm[1])) {
				hit = &ds[k]
				break
			}
		}
		if hit == nil {
			keep.Write(ps)
			continue
		}
		fmt.Fprintf(&missing, `<missingSet><path>%s</path><fault><fault xsi:type="NoPermission"><object type="%s">%s</object><privilegeId>%s</privilegeId></fault>`+
			`<localizedMessage>Permission to perform this operation was denied.</localizedMessage></fault></missingSet>`,
			nm[1], m[1], m[2], html.EscapeString(hit.privilege))
	}
	end := bytes.LastIndex(rest, []byte("</objects>"))
	if end < 0 {
		return obj
	}
	keep.Write(rest[:end])
	keep.Write(missing.Bytes())
	keep.Write(rest[end:])
	return keep.Bytes()
}

// answerRetrieve rewrites a RetrievePropertiesEx answer of the simulator when the lab pages it
// or denies a property in it; false: forward the simulator's answer unchanged.
func (f *front) answerRetrieve(w http.ResponseWriter, body, out []byte) bool {
	inv.mu.Lock()
	size, anyDenied := inv.pageSize, len(inv.denied) > 0
	inv.mu.Unlock()
	if ms, ok := field(body, "maxObjects"); ok {
		if max, err := strconv.Atoi(ms); err == nil && max > 0 {
			size = max
		}
	}
	objs := reObjects.FindAll(out, -1)
	if !anyDenied && (size <= 0 || len(objs) <= size) {
		return false
	}
	if anyDenied {
		for i, o := range objs {
			objs[i] = f.denyProps(o)
		}
	}
	if size <= 0 {
		size = len(objs)
	}
	f.writePage("RetrievePropertiesEx", w, objs, size)
	return true
}

// serveInventoryControl: /lab/page-size?size=N, /lab/deny?vm=NAME|ref=REF&path=P[&privilege=X],
// /lab/allow (clears every denial), /lab/disks?vm=NAME (the lab's disks of a VM, as in lab.json).
func (f *front) serveInventoryControl(w http.ResponseWriter, r *http.Request, op string) {
	q := r.URL.Query()
	l := f.l
	switch op {
	case "page-size":
		n, err := strconv.Atoi(q.Get("size"))
		if err != nil || n < 0 {
			http.Error(w, "size must be a number of objects (0: no paging without maxObjects)", http.StatusBadRequest)
			return
		}
		inv.mu.Lock()
		inv.pageSize = n
		inv.mu.Unlock()
		writeJSON(w, map[string]interface{}{"pageSize": n})
	case "deny":
		ref := q.Get("ref")
		if name := q.Get("vm"); name != "" {
			l.mu.Lock()
			if v := l.vmsByName[name]; v != nil {
				ref = v.ref
			}
			l.mu.Unlock()
		}
		path, priv := q.Get("path"), q.Get("privilege")
		if ref == "" || path == "" {
			http.Error(w, "deny needs vm=NAME (or ref=MOREF) and path=PROPERTY", http.StatusBadRequest)
			return
		}
		if priv == "" {
			priv = "System.Read"
		}
		inv.mu.Lock()
		inv.denied[ref] = append(inv.denied[ref], denial{path: path, privilege: priv})
		inv.mu.Unlock()
		writeJSON(w, map[string]interface{}{"ref": ref, "path": path, "privilege": priv})
	case "allow":
		inv.mu.Lock()
		inv.denied = map[string][]denial{}
		inv.mu.Unlock()
		writeJSON(w, map[string]interface{}{"ok": true})
	case "disks":
		l.mu.Lock()
		defer l.mu.Unlock()
		v := l.requestVM(w, q)
		if v == nil {
			return
		}
		out := []diskInfo{}
		for _, d := range v.disks {
			out = append(out, l.diskInfoOf(d))
		}
		writeJSON(w, out)
	default:
		http.NotFound(w, r)
	}
}

// reconfigDisks answers a ReconfigVM_Task whose deviceChange touches virtual disks: the lab
// applies it to its own disks (add with fileOperation create, remove, edit of the unit number)
// in a task of its own. false: no disk in the spec, the simulator handles the request.
func (f *front) reconfigDisks(w http.ResponseWriter, this string, body []byte) bool {
	if !bytes.Contains(body, []byte("deviceChange")) {
		return false
	}
	m, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		return false
	}
	req, ok := m.Body.(*types.ReconfigVM_Task)
	if !ok {
		return false
	}
	var specs []*types.VirtualDeviceConfigSpec
	for _, c := range req.Spec.DeviceChange {
		if s := c.GetVirtualDeviceConfigSpec(); s != nil {
			if _, ok := s.Device.(*types.VirtualDisk); ok {
				specs = append(specs, s)
			}
		}
	}
	if len(specs) == 0 {
		return false
	}
	others := len(specs) != len(req.Spec.DeviceChange)
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: this}
	var msg string
	task := simulator.CreateTask(ref, "reconfigVM", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		l := f.l
		l.mu.Lock()
		defer l.mu.Unlock()
		v := l.vmsByRef[this]
		if v == nil {
			return nil, &types.ManagedObjectNotFound{Obj: ref}
		}
		fail := func(s string) (types.AnyType, types.BaseMethodFault) {
			msg = s
			return nil, &types.NotSupported{}
		}
		if others {
			return fail("the lab applies disk changes only in a deviceChange of virtual disks alone")
		}
		if len(v.snaps) > 0 {
			return fail(fmt.Sprintf("VM %s has snapshots; the lab adds, removes and moves disks only on a VM without snapshots", v.name))
		}
		for _, s := range specs {
			dev := s.Device.(*types.VirtualDisk)
			var err error
			switch s.Operation {
			case types.VirtualDeviceConfigSpecOperationAdd:
				err = f.addDiskSpec(v, s, dev)
			case types.VirtualDeviceConfigSpecOperationRemove:
				err = l.removeDisk(v, dev.Key)
			case types.VirtualDeviceConfigSpecOperationEdit:
				err = f.moveDisk(v, dev)
			default:
				err = fmt.Errorf("unknown deviceChange operation %q", s.Operation)
			}
			if err != nil {
				return fail(err.Error())
			}
		}
		return nil, nil
	})
	tref := task.Run()
	if msg != "" {
		simulator.Map.WithLock(task, func() {
			if task.Info.Error != nil {
				task.Info.Error.LocalizedMessage = msg
			}
		})
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write(envelope(fmt.Sprintf(`<ReconfigVM_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></ReconfigVM_TaskResponse>`, tref.Value)))
	return true
}

// controllerBus is the SCSI bus number of the controller with this key on VM ref (-1: none).
func controllerBus(ref string, ctrlKey int32) int32 {
	bus := int32(-1)
	if vm := simVM(ref); vm != nil {
		simulator.Map.WithLock(vm, func() {
			for _, d := range vm.Config.Hardware.Device {
				if sc, ok := d.(types.BaseVirtualSCSIController); ok && d.GetVirtualDevice().Key == ctrlKey {
					bus = sc.GetVirtualSCSIController().BusNumber
				}
			}
		})
	}
	return bus
}

// slotUsed: does another disk of v sit at bus:unit?
func slotUsed(v *labVM, key, bus, unit int32) bool {
	for _, d := range v.disks {
		if d.key != key && d.bus == bus && d.unit == unit {
			return true
		}
	}
	return false
}

func (f *front) addDiskSpec(v *labVM, s *types.VirtualDeviceConfigSpec, dev *types.VirtualDisk) error {
	if s.FileOperation != types.VirtualDeviceConfigSpecFileOperationCreate {
		return fmt.Errorf("the lab adds only new disks (fileOperation create), not existing files")
	}
	bus := controllerBus(v.ref, dev.ControllerKey)
	if bus < 0 {
		return fmt.Errorf("VM %s has no SCSI controller with key %d", v.name, dev.ControllerKey)
	}
	unit := int32(-1)
	if dev.UnitNumber != nil {
		unit = *dev.UnitNumber
	} else {
		for u := int32(0); u < 16; u++ {
			if u != 7 && !slotUsed(v, 0, bus, u) {
				unit = u
				break
			}
		}
	}
	if unit < 0 || unit > 15 || unit == 7 || slotUsed(v, 0, bus, unit) {
		return fmt.Errorf("unit %d on SCSI bus %d of VM %s is not free", unit, bus, v.name)
	}
	capacity := dev.CapacityInBytes
	if capacity == 0 {
		capacity = dev.CapacityInKB * 1024
	}
	_, err := f.l.addDisk(v, 2000+16*bus+unit, capacity)
	return err
}

// moveDisk applies an edit of a disk's controller or unit number (the device key stays, as on vSphere).
func (f *front) moveDisk(v *labVM, dev *types.VirtualDisk) error {
	d := v.disk(dev.Key)
	if d == nil {
		return fmt.Errorf("VM %s has no disk %d", v.name, dev.Key)
	}
	bus, unit := d.bus, d.unit
	ctrlKey := dev.ControllerKey
	if ctrlKey != 0 {
		if bus = controllerBus(v.ref, ctrlKey); bus < 0 {
			return fmt.Errorf("VM %s has no SCSI controller with key %d", v.name, ctrlKey)
		}
	}
	if dev.UnitNumber != nil {
		unit = *dev.UnitNumber
	}
	if unit < 0 || unit > 15 || unit == 7 || slotUsed(v, d.key, bus, unit) {
		return fmt.Errorf("unit %d on SCSI bus %d of VM %s is not free", unit, bus, v.name)
	}
	vm := simVM(v.ref)
	if vm == nil {
		return fmt.Errorf("VM %s is not in the simulator", v.name)
	}
	// The VM's per-slot settings (scsiB:U.*, here ctkEnabled) move with the disk, as its vmx keys do.
	oldSlot, newSlot := fmt.Sprintf("scsi%d:%d.", d.bus, d.unit), fmt.Sprintf("scsi%d:%d.", bus, unit)
	simulator.Map.WithLock(vm, func() {
		for _, o := range vm.Config.ExtraConfig {
			if ov := o.GetOptionValue(); strings.HasPrefix(strings.ToLower(ov.Key), oldSlot) {
				ov.Key = newSlot + ov.Key[len(oldSlot):]
			}
		}
		for i, x := range vm.Config.Hardware.Device {
			if vd, ok := x.(*types.VirtualDisk); ok && vd.Key == d.key {
				c := cloneDisk(vd)
				u := unit
				c.UnitNumber = &u
				if ctrlKey != 0 {
					c.ControllerKey = ctrlKey
				}
				vm.Config.Hardware.Device[i] = c
			}
		}
	})
	d.bus, d.unit = bus, unit
	f.l.syncTracking(v)
	return nil
}

// clusterPool is the first cluster's root resource pool, wherever the model put the cluster.
func clusterPool(c *govmomi.Client) (*object.ResourcePool, error) {
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		if cl, ok := e.(*simulator.ClusterComputeResource); ok && cl.ResourcePool != nil {
			return object.NewResourcePool(c.Client, *cl.ResourcePool), nil
		}
	}
	return nil, fmt.Errorf("the model has no cluster")
}

// datastoreNamed finds a datastore by name, wherever the model put it.
func datastoreNamed(c *govmomi.Client, name string) (*object.Datastore, error) {
	for _, e := range simulator.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == name {
			return object.NewDatastore(c.Client, ds.Self), nil
		}
	}
	return nil, fmt.Errorf("the model has no datastore %s", name)
}
