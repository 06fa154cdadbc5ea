package main

// The VDDK view map: what the libvixDiskLib double (native/vddk-double) needs to serve what ESXi
// would serve. With -vddk-map, each snapshot's disks are exported read-only over NBD (startExport,
// the lab's point-in-time view of the disk at that snapshot) and <dir>/vddk-map.tsv names them by
// the keys VDDK is given: the VM moref (vmxSpec), the snapshot moref (snapshotRef) and the disk path
// as the snapshot's config names it. The file is rewritten atomically after every snapshot create
// and remove; the double re-reads it at each ConnectEx and Open. <dir>/vddk-sessions holds the
// session cookies vCenter would accept (credType SESSIONID), one a line, mode 0600.
//
// Format (tab-separated, one record a line, # comments):
//   user <TAB> administrator@vsphere.local
//   password_file <TAB> /lab/dir/password
//   thumbprint <TAB> AA:BB:...            (SHA-1, as VDDK pins it)
//   sessions_file <TAB> /lab/dir/vddk-sessions
//   vm <TAB> vm-42
//   disk <TAB> vm-42 <TAB> snapshot-7 <TAB> [LocalDS_0] vm/vm-000001.vmdk <TAB> nbd://127.0.0.1:PORT <TAB> capacity-bytes

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var vddkMap struct {
	enabled   bool
	user      string
	pwFile    string
	thumbSHA1 string
	file      string
	sessions  string
}

// enableVddkMap turns the map on and writes it for the VMs the lab has (l.mu held).
func (l *lab) enableVddkMap(user, pwFile, thumbSHA1 string) {
	vddkMap.enabled = true
	vddkMap.user, vddkMap.pwFile, vddkMap.thumbSHA1 = user, pwFile, thumbSHA1
	vddkMap.file = filepath.Join(l.dir, "vddk-map.tsv")
	vddkMap.sessions = filepath.Join(l.dir, "vddk-sessions")
	l.publishVddkSessions()
	l.publishVddkMap()
}

// snapshotDiskFiles is the disk file name of each device key in a snapshot's config.
func snapshotDiskFiles(snapRef string) map[int32]string {
	out := map[int32]string{}
	snapObj, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapRef}).(*simulator.VirtualMachineSnapshot)
	if snapObj == nil {
		return out
	}
	simulator.Map.WithLock(snapObj, func() {
		for _, dev := range snapObj.Config.Hardware.Device {
			vd, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			if b, ok := vd.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
				out[vd.Key] = b.GetVirtualDeviceFileBackingInfo().FileName
			}
		}
	})
	return out
}

// publishVddkMap exports every snapshot disk of every VM (once each) and rewrites the map (l.mu held).
func (l *lab) publishVddkMap() {
	if !vddkMap.enabled {
		return
	}
	var b strings.Builder
	b.WriteString("# vmlift lab VDDK view map (lab/vddk_map.go): moref, snapshot, disk path -> NBD export\n")
	fmt.Fprintf(&b, "user\t%s\npassword_file\t%s\nthumbprint\t%s\nsessions_file\t%s\n", vddkMap.user, vddkMap.pwFile, vddkMap.thumbSHA1, vddkMap.sessions)
	refs := make([]string, 0, len(l.vmsByRef))
	for ref := range l.vmsByRef {
		refs = append(refs, ref)
	}
	sort.Strings(refs)
	for _, ref := range refs {
		v := l.vmsByRef[ref]
		fmt.Fprintf(&b, "vm\t%s\n", v.ref)
		for _, s := range v.snaps {
			files := snapshotDiskFiles(s.ref)
			for _, d := range v.disks {
				name, ok := files[d.key]
				if !ok {
					continue
				}
				e, err := l.startExport(v, s.ref, d.key)
				if err != nil {
					logf("vddk map: export of %s %s disk %d: %v", v.name, s.ref, d.key, err)
					continue
				}
				fmt.Fprintf(&b, "disk\t%s\t%s\t%s\t%s\t%d\n", v.ref, s.ref, name, e.uri, d.capacity)
			}
		}
	}
	if err := writeAtomic(vddkMap.file, []byte(b.String()), 0o644); err != nil {
		logf("vddk map: %v", err)
	}
}

// publishVddkSessions rewrites the cookies vCenter accepts (l.mu held).
func (l *lab) publishVddkSessions() {
	if !vddkMap.enabled {
		return
	}
	var b strings.Builder
	for c := range l.cookies {
		b.WriteString(c + "\n")
	}
	if err := writeAtomic(vddkMap.sessions, []byte(b.String()), 0o600); err != nil {
		logf("vddk sessions: %v", err)
	}
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
