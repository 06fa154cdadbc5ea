package main

// A peer for bench/vsphere-inventory.ts: the same inventory request (ContainerView +
// RetrievePropertiesEx with the same property paths) made by govmomi's own Go client, which
// decodes into typed structs. Run as: vmlift-lab -peer-inventory URL -user U -password-file F.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

var peerVMPaths = []string{"name", "runtime.powerState", "runtime.host", "runtime.consolidationNeeded", "config.guestId", "config.guestFullName",
	"config.version", "config.uuid", "config.changeTrackingEnabled", "config.hardware.device", "config.extraConfig", "snapshot",
	"capability.changeTrackingSupported", "config.hardware.numCPU", "config.hardware.memoryMB", "config.firmware", "parent", "parentVApp"}

func runPeerInventory(rawURL, user, pwFile string, rounds int) error {
	if s := os.Getenv("VMLIFT_PEER_ROUNDS"); s != "" {
		fmt.Sscanf(s, "%d", &rounds)
	}
	ctx := context.Background()
	pw, err := os.ReadFile(pwFile)
	if err != nil {
		return err
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	u.User = url.UserPassword(user, strings.TrimSpace(string(pw)))
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		return err
	}
	defer c.Logout(ctx)
	best := time.Duration(1 << 62)
	var all []float64
	objects := 0
	for i := 0; i < rounds+1; i++ { // the first round warms up
		start := time.Now()
		v, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine", "HostSystem", "Datastore", "Datacenter", "Folder", "VirtualApp"}, true)
		if err != nil {
			return err
		}
		req := types.RetrievePropertiesEx{This: c.ServiceContent.PropertyCollector, SpecSet: []types.PropertyFilterSpec{{
			ObjectSet: []types.ObjectSpec{{Obj: v.Reference(), Skip: types.NewBool(true), SelectSet: []types.BaseSelectionSpec{
				&types.TraversalSpec{SelectionSpec: types.SelectionSpec{Name: "view"}, Type: "ContainerView", Path: "view", Skip: types.NewBool(false)}}}},
			PropSet: []types.PropertySpec{{Type: "VirtualMachine", PathSet: peerVMPaths}, {Type: "HostSystem", PathSet: []string{"name", "config.product"}},
				{Type: "Datastore", PathSet: []string{"name"}}, {Type: "Datacenter", PathSet: []string{"name", "datastore", "parent"}}, {Type: "Folder", PathSet: []string{"name", "parent"}},
				{Type: "VirtualApp", PathSet: []string{"name", "parentFolder", "parentVApp"}}},
		}}}
		res, err := methods.RetrievePropertiesEx(ctx, c.Client, &req)
		if err != nil {
			return err
		}
		n := 0
		for r := res.Returnval; r != nil; {
			n += len(r.Objects)
			if r.Token == "" {
				break
			}
			cr, err := methods.ContinueRetrievePropertiesEx(ctx, c.Client, &types.ContinueRetrievePropertiesEx{This: req.This, Token: r.Token})
			if err != nil {
				return err
			}
			r = &cr.Returnval
		}
		_ = v.Destroy(ctx)
		if d := time.Since(start); i > 0 {
			all = append(all, d.Seconds())
			if d < best {
				best = d
			}
		}
		objects = n
	}
	out, _ := json.Marshal(map[string]interface{}{"seconds": best.Seconds(), "rounds": all, "objects": objects})
	fmt.Println(string(out))
	return nil
}
