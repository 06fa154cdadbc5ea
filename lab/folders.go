package main

// -folders: VMs in nested VM folders and one in a vApp, as a vCenter's "VMs and Templates" view
// holds them. The simulator's model puts every VM in the datacenter's vm folder, and a VM it
// creates in a vApp keeps its folder as parent; vSphere leaves a vApp member's `parent` unset and
// sets `parentVApp` (ManagedEntity.parent, VirtualMachine.parentVApp), and lists the root vApp
// among its folder's children (VirtualApp.parentFolder), so the lab makes the simulator's objects so.

import (
	"context"
	"strings"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// folderVM is a VM placed in a VM folder path below the datacenter's vm folder ("Prod/Web"),
// or in vApp `vApp` whose own folder is that path.
type folderVM struct {
	folder string
	vApp   string
	plan   vmPlan
}

func folderPlans(diskMB int64) []folderVM {
	vm := func(name string, on bool) vmPlan {
		return vmPlan{name: name, version: "vmx-13", guest: "otherLinux64Guest", disksMB: []int64{diskMB}, powerOn: on}
	}
	return []folderVM{
		{folder: "Prod/Web", plan: vm("web-01", true)},
		{folder: "Prod/Web", plan: vm("web-02", false)},
		{folder: "Prod/Db", plan: vm("db-01", true)},
		{folder: "Test", plan: vm("test-01", false)},
		{folder: "Prod", vApp: "shop", plan: vm("shop-app", true)},
	}
}

// folderAt finds or creates the folder path under the datacenter's vm folder.
func folderAt(ctx context.Context, c *govmomi.Client, vmFolder *object.Folder, path string, made map[string]*object.Folder) (*object.Folder, error) {
	f := vmFolder
	sofar := ""
	for _, name := range strings.Split(path, "/") {
		if name == "" {
			continue
		}
		sofar += "/" + name
		if g, ok := made[sofar]; ok {
			f = g
			continue
		}
		g, err := f.CreateFolder(ctx, name)
		if err != nil {
			return nil, err
		}
		made[sofar] = g
		f = g
	}
	return f, nil
}

// createFolderVMs creates the folder VMs; vApps are made under pool (the cluster's root pool).
func createFolderVMs(ctx context.Context, c *govmomi.Client, l *lab, vmFolder *object.Folder, pool *object.ResourcePool,
	ds types.ManagedObjectReference, plans []folderVM) ([]vmInfo, error) {
	made := map[string]*object.Folder{}
	vapps := map[string]*object.ResourcePool{}
	var out []vmInfo
	for _, p := range plans {
		f, err := folderAt(ctx, c, vmFolder, p.folder, made)
		if err != nil {
			return nil, err
		}
		in := pool
		if p.vApp != "" {
			if in = vapps[p.vApp]; in == nil {
				va, err := pool.CreateVApp(ctx, p.vApp, types.DefaultResourceConfigSpec(), types.VAppConfigSpec{}, f)
				if err != nil {
					return nil, err
				}
				in = object.NewResourcePool(c.Client, va.Reference())
				vapps[p.vApp] = in
				listInFolder(f.Reference(), va.Reference())
			}
		}
		vi, err := createVM(ctx, c, l, f, in, ds, p.plan)
		if err != nil {
			return nil, err
		}
		vi.Folder = p.folder
		vi.VApp = p.vApp
		if p.vApp != "" {
			intoVApp(f.Reference(), vi.Ref, in.Reference())
		}
		out = append(out, vi)
	}
	return out, nil
}

func listInFolder(folder, child types.ManagedObjectReference) {
	f, _ := simulator.Map.Get(folder).(*simulator.Folder)
	if f == nil {
		return
	}
	simulator.Map.WithLock(f, func() { f.ChildEntity = append(f.ChildEntity, child) })
}

// intoVApp makes a VM a vApp member as vSphere shows one: parent unset, parentVApp set, and not
// among its folder's children (the ContainerView still finds it through the vApp and its host).
func intoVApp(folder types.ManagedObjectReference, vmRef string, vApp types.ManagedObjectReference) {
	vm := simVM(vmRef)
	simulator.Map.WithLock(vm, func() {
		vm.Parent = nil
		vm.ParentVApp = &vApp
	})
	f, _ := simulator.Map.Get(folder).(*simulator.Folder)
	if f == nil {
		return
	}
	simulator.Map.WithLock(f, func() {
		kids := f.ChildEntity[:0]
		for _, k := range f.ChildEntity {
			if k.Value != vmRef {
				kids = append(kids, k)
			}
		}
		f.ChildEntity = kids
	})
}
