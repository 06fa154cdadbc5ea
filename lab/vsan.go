package main

// The lab's datastores as vSphere types them: LocalDS_0 presents as VMFS (version: -vmfs-version),
// and a second datastore, vsanDatastore, as vSAN (summary.type "vsan"). On vSAN a VM folder holds
// the disk descriptors but no extent files: a disk's data is a vSAN object (backingObjectId, the
// descriptor's extent "vsan://<uuid>"), so /folder has no -flat.vmdk to serve. The lab keeps that
// object's data under its own directory, outside every datastore, readable through its NBD side.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const vsanDsName = "vsanDatastore"

var (
	vsanRef types.ManagedObjectReference
	vsanDir string
)

// setupDatastores types LocalDS_0 as VMFS and adds vsanDatastore, mounted on every host.
func (l *lab) setupDatastores(ctx context.Context, c *govmomi.Client, dsRoot string) error {
	for _, e := range simulator.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == l.dsName {
			simulator.Map.WithLock(ds, func() { ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS) })
		}
	}
	vsanDir = filepath.Join(dsRoot, "vsan-"+randHex(4))
	if err := os.MkdirAll(vsanDir, 0o755); err != nil {
		return err
	}
	for _, e := range simulator.Map.All("HostSystem") {
		h, ok := e.(*simulator.HostSystem)
		if !ok {
			continue
		}
		dss, err := object.NewHostSystem(c.Client, h.Reference()).ConfigManager().DatastoreSystem(ctx)
		if err != nil {
			return err
		}
		ds, err := dss.CreateLocalDatastore(ctx, vsanDsName, vsanDir)
		if err != nil {
			return fmt.Errorf("vSAN datastore on %s: %v", h.Name, err)
		}
		vsanRef = ds.Reference()
	}
	if ds, ok := simulator.Map.Get(vsanRef).(*simulator.Datastore); ok {
		simulator.Map.WithLock(ds, func() {
			ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVsan)
			ds.Summary.Url = "ds:///vmfs/volumes/vsan:" + strings.ReplaceAll(newUUID(), "-", "")[:16] + "/"
			ds.Capability.SeSparseSupported = types.NewBool(false)
			ds.Capability.RawDiskMappingsSupported = false
		})
	}
	return nil
}

// datastoreOf is the datastore a shaped VM lives on (name and reference).
func (l *lab) datastoreOf(p vmPlan, local types.ManagedObjectReference) (string, types.ManagedObjectReference) {
	if p.datastore == vsanDsName {
		return vsanDsName, vsanRef
	}
	return l.dsName, local
}

// basePath is where the lab keeps the base data of a disk whose flat extent would be flatRel:
// that file on a VMFS datastore, a file outside the datastores for a vSAN object.
func (l *lab) basePath(dsName, flatRel string) string {
	if dsName == vsanDsName {
		_ = os.MkdirAll(filepath.Join(l.dir, "vsan-objects"), 0o755)
		return filepath.Join(l.dir, "vsan-objects", strings.ReplaceAll(flatRel, "/", "_")+".raw")
	}
	return filepath.Join(l.dsDir, flatRel)
}

// placeDisk records where disk d lives; on vSAN it also removes the flat file the simulator made.
func (l *lab) placeDisk(d *disk, dsName string) {
	m := l.metaOf(d)
	if dsName != vsanDsName {
		return
	}
	m.dsName, m.dsDir, m.vsan = vsanDsName, vsanDir, true
	m.format, m.variant = deltaFormat(0, d.capacity, true)
	_ = os.Remove(filepath.Join(vsanDir, d.flatRel))
}
