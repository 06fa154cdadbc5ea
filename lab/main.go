// vmlift-lab: govmomi's vCenter simulator on loopback with TLS, plus what it lacks for
// vmlift: disks with data, guest writes, redirect-on-write snapshots, change tracking with
// QueryChangedDiskAreas, snapshot data over /folder and NBD, fault injection.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func logf(format string, a ...interface{}) { log.Printf(format, a...) }

func thumb(sum []byte) string {
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// makeCert creates a self-signed ECDSA certificate for 127.0.0.1 / localhost, or reuses the one
// a previous lab left in dir, so a pinned thumbprint survives a restart.
func makeCert(dir string) (tls.Certificate, string, []byte, error) {
	certFile := filepath.Join(dir, "cert.pem")
	if c, err := tls.LoadX509KeyPair(certFile, filepath.Join(dir, "key.pem")); err == nil {
		if x, err := x509.ParseCertificate(c.Certificate[0]); err == nil && time.Now().Before(x.NotAfter.Add(-24*time.Hour)) {
			return c, certFile, c.Certificate[0], nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "vmlift-lab-vcenter", Organization: []string{"vmlift lab"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", nil, err
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return tls.Certificate{}, "", nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, "", nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	return c, certFile, der, err
}

type diskInfo struct {
	Key      int32  `json:"key"`
	File     string `json:"file"`
	FlatPath string `json:"flatPath"`
	DsPath   string `json:"datastorePath"`
	Capacity int64  `json:"capacity"`
	Bus      int32  `json:"bus"`
	Unit     int32  `json:"unit"`
	Ds       string `json:"datastore"`
}

type vmInfo struct {
	Name  string     `json:"name"`
	Ref   string     `json:"moref"`
	Disks []diskInfo `json:"disks"`
	// With -folders: the VM folder path below the datacenter's vm folder, and the vApp it is in.
	Folder string `json:"folder,omitempty"`
	VApp   string `json:"vApp,omitempty"`
}

type labState struct {
	URL              string   `json:"url"`
	User             string   `json:"user"`
	PasswordFile     string   `json:"passwordFile"`
	ThumbprintSHA1   string   `json:"thumbprintSha1"`
	ThumbprintSHA256 string   `json:"thumbprintSha256"`
	CertFile         string   `json:"certFile"`
	ControlURL       string   `json:"controlUrl"`
	Token            string   `json:"token"`
	PID              int      `json:"pid"`
	Datacenter       string   `json:"datacenter"`
	DatacenterPath   string   `json:"datacenterPath"`
	Datastore        string   `json:"datastore"`
	DatastoreDir     string   `json:"datastoreDir"`
	BlockSize        int      `json:"cbtBlockSize"`
	ApiType          string   `json:"apiType"` // "VirtualCenter", or "HostAgent" with -esx
	VMs              []vmInfo `json:"vms"`
}

type vmPlan struct {
	name      string
	version   string
	guest     string
	disksMB   []int64
	indep     bool
	snapshot  bool
	powerOn   bool
	rich      bool
	snapName  string // the kept snapshot's name (default "before-upgrade")
	datastore string // "" = LocalDS_0; vsanDatastore
	image     string // a raw disk image to write onto the first disk instead of fillDisk's data (lab/guest.go)
}

func plans(n int, diskMB int64) []vmPlan {
	p := []vmPlan{
		{name: "two-disks", version: "vmx-13", guest: "otherLinux64Guest", disksMB: []int64{diskMB, diskMB / 2}, powerOn: true, rich: true},
		{name: "shape-snapshot", version: "vmx-13", guest: "otherLinux64Guest", disksMB: []int64{diskMB}, snapshot: true, rich: true},
		{name: "shape-independent", version: "vmx-13", guest: "windows9Server64Guest", disksMB: []int64{diskMB}, indep: true, powerOn: true},
		{name: "shape-vmx04", version: "vmx-04", guest: "otherGuest", disksMB: []int64{diskMB}},
		// vCenter 7.0U3 and later list their vSphere Cluster Services agents among the VMs.
		{name: "vCLS-4c2b7e1d-9a3f-4d6e-8b5c-1f0a2e3d4c5b", version: "vmx-14", guest: "otherLinux64Guest", disksMB: []int64{2}, powerOn: true},
		// A backup product's snapshot left in place: a cycle's snapshot is second in the chain (lab/deltas.go).
		{name: "shape-foreign-snapshot", version: "vmx-13", guest: "otherLinux64Guest", disksMB: []int64{diskMB}, snapshot: true, powerOn: true, rich: true,
			snapName: "VEEAM BACKUP TEMPORARY SNAPSHOT"},
		{name: "shape-vsan", version: "vmx-14", guest: "otherLinux64Guest", disksMB: []int64{diskMB, diskMB / 2}, powerOn: true, rich: true, datastore: vsanDsName},
	}
	for i := 1; i <= n; i++ {
		g := "otherLinux64Guest"
		if i%2 == 0 {
			g = "windows9Server64Guest"
		}
		p = append(p, vmPlan{name: fmt.Sprintf("vm-%04d", i), version: "vmx-13", guest: g, disksMB: []int64{diskMB},
			powerOn: i%3 != 0, rich: i <= 8})
	}
	return p
}

// fillDisk writes deterministic data in a few regions of a fresh disk, leaving holes between.
func fillDisk(d *disk, seed string, rich bool) error {
	type region struct{ off, n int64 }
	regions := []region{{0, 4096}}
	if rich {
		regions = []region{{0, 1 << 20}, {d.capacity / 2, 256 << 10}, {d.capacity - 64<<10, 64 << 10}}
	}
	for _, r := range regions {
		buf := make([]byte, r.n)
		h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", seed, r.off)))
		for i := range buf {
			if i%32 == 0 && i > 0 {
				h = sha256.Sum256(h[:])
			}
			buf[i] = h[i%32]
		}
		if _, err := d.layers[0].f.WriteAt(buf, r.off); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	dir := flag.String("dir", "", "lab directory (state, certificate, datastore)")
	nvms := flag.Int("vms", 8, "number of plain VMs (besides the seven shaped ones)")
	diskMB := flag.Int64("disk-mb", 64, "capacity of each VM's first disk in MiB")
	port := flag.Int("port", 0, "TLS port of the front (0: any free port)")
	user := flag.String("user", "administrator@vsphere.local", "login user")
	parent := flag.Int("parent-pid", 0, "exit when this process is gone")
	peer := flag.String("peer-inventory", "", "benchmark peer: time govmomi's inventory of this vCenter URL and exit")
	pwFlag := flag.String("password-file", "", "password file (with -peer-inventory)")
	esxMode := flag.Bool("esx", false, "be a standalone ESXi host (govmomi's ESX model: HostAgent, ha-datacenter; user root) instead of a vCenter")
	vddkMapFlag := flag.Bool("vddk-map", false, "export each snapshot's disks over NBD and publish <dir>/vddk-map.tsv for the VDDK double")
	pageSize := flag.Int("page-size", defaultPageSize, "objects per RetrievePropertiesEx page when the request sets no maxObjects (0: no paging)")
	dcFolder := flag.Bool("dc-folder", false, "put the datacenter in a folder (F0/DC0), as many vCenters do")
	folderVMs := flag.Bool("folders", false, "add VMs in nested VM folders (Prod/Web, Prod/Db, Test) and one in a vApp (Prod/shop)")
	guestImage := flag.String("guest", "", "add VM guest-debian whose disk is this raw image (lab/guest/build.sh)")
	flag.Parse()
	if *esxMode && !flagSet("user") {
		*user = "root"
	}
	if *peer != "" {
		if err := runPeerInventory(*peer, *user, *pwFlag, 3); err != nil {
			log.Fatalf("peer inventory: %v", err)
		}
		return
	}
	if *dir == "" {
		log.Fatal("-dir is required")
	}
	abs, _ := filepath.Abs(*dir)
	*dir = abs
	_ = os.MkdirAll(*dir, 0o755)
	_ = os.Remove(filepath.Join(*dir, "lab.json"))
	log.SetPrefix("lab: ")

	cert, certFile, der, err := makeCert(*dir)
	if err != nil {
		log.Fatalf("certificate: %v", err)
	}
	password := randHex(12)
	pwFile := filepath.Join(*dir, "password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	dsRoot := filepath.Join(*dir, "datastore")
	_ = os.RemoveAll(dsRoot)
	_ = os.MkdirAll(dsRoot, 0o755)
	// The simulator puts its local datastores in os.TempDir().
	os.Setenv("TMPDIR", dsRoot)

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = 3
	model.Host = 0
	model.Machine = 0
	model.Datastore = 1
	model.Portgroup = 0
	model.Pool = 0
	model.App = 0
	model.Pod = 0
	if *esxMode {
		model = esxModel()
	}
	if *dcFolder {
		model.Folder = 1
	}
	inv.pageSize = *pageSize
	if err := model.Create(); err != nil {
		log.Fatalf("model: %v", err)
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*user, password)}
	srv := model.Service.NewServer()
	backend := &url.URL{Scheme: "http", Host: srv.URL.Host, Path: "/sdk"}

	l := newLab(*dir)
	l.certFile = certFile
	l.dcName = "DC0"
	if *esxMode {
		l.dcName = "ha-datacenter"
	}
	l.dsName = "LocalDS_0"
	fr := newFront(l, backend)
	var handler http.Handler = fr
	var esxFr *esxFront
	if *esxMode {
		esxFr = newESXFront(fr)
		handler = esxFr
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	hs := &http.Server{Handler: handler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ErrorLog: log.New(os.Stderr, "lab http: ", 0)}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	base := fmt.Sprintf("https://127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
	l.frontURL = base

	ctx := context.Background()
	u, _ := url.Parse(base + "/sdk")
	u.User = url.UserPassword(*user, password)
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		log.Fatalf("self-connect: %v", err)
	}
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		log.Fatal(err)
	}
	finder.SetDatacenter(dc)
	inv.dcPath = strings.TrimPrefix(dc.InventoryPath, "/")
	folders, _ := dc.Folders(ctx)
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil && *dcFolder {
		pool, err = clusterPool(c) // the model nests the cluster in a folder too
	}
	if err != nil {
		log.Fatal(err)
	}
	ds, err := finder.Datastore(ctx, l.dsName)
	if err != nil && *dcFolder {
		ds, err = datastoreNamed(c, l.dsName)
	}
	if err != nil {
		log.Fatal(err)
	}
	dsObj := simulator.Map.Get(ds.Reference()).(*simulator.Datastore)
	l.dsDir = dsObj.Info.GetDatastoreInfo().Url
	if err := l.setupDatastores(ctx, c, dsRoot); err != nil {
		log.Fatal(err)
	}

	state := labState{URL: base + "/sdk", User: *user, PasswordFile: pwFile,
		ThumbprintSHA1: thumb(sha1sum(der)), ThumbprintSHA256: thumb(sha256sum(der)), CertFile: certFile,
		ControlURL: base + "/lab", Token: l.token, PID: os.Getpid(), Datacenter: l.dcName, Datastore: l.dsName,
		DatacenterPath: strings.TrimPrefix(dc.InventoryPath, "/"),
		DatastoreDir:   l.dsDir, BlockSize: blockSize, ApiType: "VirtualCenter"}
	vmPlans := plans(*nvms, *diskMB)
	if *guestImage != "" {
		gp, err := guestPlan(*guestImage)
		if err != nil {
			log.Fatal(err)
		}
		vmPlans = append(vmPlans, gp)
	}
	if *esxMode {
		state.ApiType = "HostAgent"
		vmPlans = esxPlans(vmPlans)
	}

	start := time.Now()
	for _, p := range vmPlans {
		vi, err := createVM(ctx, c, l, folders.VmFolder, pool, ds.Reference(), p)
		if err != nil {
			log.Fatalf("create VM %s: %v", p.name, err)
		}
		state.VMs = append(state.VMs, vi)
	}
	if *folderVMs && !*esxMode {
		vis, err := createFolderVMs(ctx, c, l, folders.VmFolder, pool, ds.Reference(), folderPlans(*diskMB))
		if err != nil {
			log.Fatalf("folder VMs: %v", err)
		}
		state.VMs = append(state.VMs, vis...)
	}
	logf("%d VMs ready in %s", len(state.VMs), time.Since(start).Round(time.Millisecond))
	if esxFr != nil {
		for i := range state.VMs {
			state.VMs[i].Ref = esxVMRef(state.VMs[i].Ref)
		}
		esxFr.setReady()
	}

	if *vddkMapFlag {
		l.mu.Lock()
		l.enableVddkMap(*user, pwFile, thumb(sha1sum(der)))
		l.mu.Unlock()
	}
	js, _ := json.MarshalIndent(state, "", "  ")
	tmp := filepath.Join(*dir, "lab.json.tmp")
	if err := os.WriteFile(tmp, js, 0o600); err != nil { // holds the control token
		log.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(*dir, "lab.json")); err != nil {
		log.Fatal(err)
	}
	fmt.Println(base + "/sdk")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	parentGone := make(chan struct{})
	if *parent > 0 {
		go func() {
			for {
				time.Sleep(500 * time.Millisecond)
				if syscall.Kill(*parent, 0) != nil {
					close(parentGone)
					return
				}
			}
		}()
	}
	select {
	case <-sig:
	case <-fr.stop:
	case <-parentGone:
	}
	l.mu.Lock()
	l.stopAllExports()
	l.mu.Unlock()
	_ = c.Logout(ctx)
	_ = hs.Close()
	srv.Close()
	_ = os.Remove(filepath.Join(*dir, "lab.json"))
	logf("stopped")
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func sha1sum(b []byte) []byte   { s := sha1.Sum(b); return s[:] }
func sha256sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func createVM(ctx context.Context, c *govmomi.Client, l *lab, folder *object.Folder, pool *object.ResourcePool, ds types.ManagedObjectReference, p vmPlan) (vmInfo, error) {
	dsName, ds := l.datastoreOf(p, ds)
	var devices object.VirtualDeviceList
	// Keys as vSphere numbers them: SCSI controllers 1000+bus, disks 2000 + 16*bus + unit.
	scsi, _ := devices.CreateSCSIController("pvscsi")
	scsi.GetVirtualDevice().Key = 1000
	devices = append(devices, scsi)
	for i, mb := range p.disksMB {
		ctrl := scsi
		if i == 1 {
			ctrl, _ = devices.CreateSCSIController("lsilogic")
			ctrl.GetVirtualDevice().Key = 1001
			devices = append(devices, ctrl)
		}
		file := fmt.Sprintf("[%s] %s/%s.vmdk", dsName, p.name, p.name)
		if i > 0 {
			file = fmt.Sprintf("[%s] %s/%s_%d.vmdk", dsName, p.name, p.name, i)
		}
		d := devices.CreateDisk(ctrl.(types.BaseVirtualController), ds, file)
		d.Key = 2000 + 16*int32(i)
		d.CapacityInKB = mb * 1024
		d.CapacityInBytes = mb << 20
		d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).Uuid = newUUID()
		if p.indep {
			d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).DiskMode = string(types.VirtualDiskModeIndependent_persistent)
		}
		devices = append(devices, d)
	}
	change, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return vmInfo{}, err
	}
	spec := types.VirtualMachineConfigSpec{Name: p.name, GuestId: p.guest, NumCPUs: 2, MemoryMB: 2048,
		Version: p.version, Files: &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", dsName)},
		DeviceChange: change}
	task, err := folder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return vmInfo{}, err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return vmInfo{}, err
	}
	ref := info.Result.(types.ManagedObjectReference)
	vm := object.NewVirtualMachine(c.Client, ref)
	sim := simVM(ref.Value)
	// vCenter reports whether a VM can track changes; the simulator leaves it unset. vmx-07 is the first that can.
	hw := 0
	fmt.Sscanf(p.version, "vmx-%d", &hw)
	simulator.Map.WithLock(sim, func() { sim.Capability.ChangeTrackingSupported = types.NewBool(hw >= 7) })
	lv := &labVM{name: p.name, ref: ref.Value}
	vi := vmInfo{Name: p.name, Ref: ref.Value}
	var ctrls = map[int32]int32{}
	for _, dev := range sim.Config.Hardware.Device {
		if sc, ok := dev.(types.BaseVirtualSCSIController); ok {
			ctrls[dev.GetVirtualDevice().Key] = sc.GetVirtualSCSIController().BusNumber
		}
	}
	for _, dev := range sim.Config.Hardware.Device {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		rel := b.FileName[strings.Index(b.FileName, "] ")+2:]
		flatRel := strings.TrimSuffix(rel, ".vmdk") + "-flat.vmdk"
		capacity := vd.CapacityInBytes
		if capacity == 0 {
			capacity = vd.CapacityInKB * 1024
		}
		d, err := openDisk(vd.Key, capacity, l.basePath(dsName, flatRel), flatRel, b.FileName,
			filepath.Join(l.dir, "deltas", p.name))
		if err != nil {
			return vmInfo{}, err
		}
		l.placeDisk(d, dsName)
		d.bus = ctrls[vd.ControllerKey]
		if vd.UnitNumber != nil {
			d.unit = *vd.UnitNumber
		}
		fill := func() error { return fillDisk(d, p.name, p.rich) }
		if p.image != "" {
			fill = func() error { return fillFromImage(d, p.image) }
		}
		if err := fill(); err != nil {
			return vmInfo{}, err
		}
		lv.disks = append(lv.disks, d)
		vi.Disks = append(vi.Disks, diskInfo{Key: vd.Key, File: b.FileName, FlatPath: d.layers[0].path,
			DsPath: flatRel, Capacity: capacity, Bus: d.bus, Unit: d.unit, Ds: dsName})
	}
	l.mu.Lock()
	l.vmsByRef[lv.ref] = lv
	l.vmsByName[lv.name] = lv
	l.order = append(l.order, lv)
	l.renameLive(lv) // backings, descriptors and layoutEx as a datastore holds them
	l.mu.Unlock()
	if p.powerOn {
		t, err := vm.PowerOn(ctx)
		if err != nil {
			return vi, err
		}
		if err := t.Wait(ctx); err != nil {
			return vi, err
		}
	}
	if p.snapshot {
		name, desc := "before-upgrade", "left by an administrator"
		if p.snapName != "" {
			name, desc = p.snapName, "kept by a backup product"
		}
		t, err := vm.CreateSnapshot(ctx, name, desc, false, false)
		if err != nil {
			return vi, err
		}
		if err := t.Wait(ctx); err != nil {
			return vi, err
		}
	}
	return vi, nil
}
