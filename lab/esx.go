package main

// ESX mode (-esx): the lab as a standalone ESXi host instead of a vCenter. govmomi's ESX model
// gives what hostd serves: about.apiType "HostAgent", the datacenter "ha-datacenter", the host
// "ha-host" and its ha-* managers. This file adds what the model does not copy from hostd:
// VirtualMachine managed object ids that are plain integers ("7", not "vm-7"), and a switch that
// makes the host behave as one with the free vSphere Hypervisor license (read-only API).

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

// esxModel is govmomi's ESX model with the lab's datastore and without its sample VMs.
func esxModel() *simulator.Model {
	m := simulator.ESX()
	m.Machine = 0
	m.Datastore = 1
	return m
}

// esxPlans drops the vCLS agent: a host that no vCenter manages runs no vSphere Cluster Services.
func esxPlans(p []vmPlan) []vmPlan {
	var out []vmPlan
	for _, x := range p {
		if systemVMName(x.name) {
			continue
		}
		out = append(out, x)
	}
	return out
}

func systemVMName(name string) bool { return len(name) > 5 && name[:5] == "vCLS-" }

var (
	// A VirtualMachine reference as the simulator writes it ("vm-7") and as hostd does ("7").
	reSimVMRef  = regexp.MustCompile(`((?:^|\s)type="VirtualMachine"[^>]*>)\s*vm-(\d+)\s*<`)
	reHostVMRef = regexp.MustCompile(`((?:^|\s)type="VirtualMachine"[^>]*>)\s*(\d+)\s*<`)
	reBadVMRef  = regexp.MustCompile(`esx-unknown-(vm-\d+)`)
)

// esxVMRef is the id hostd would give the simulator's VM ref ("vm-7" -> "7").
func esxVMRef(ref string) string {
	if len(ref) > 3 && ref[:3] == "vm-" {
		return ref[3:]
	}
	return ref
}

// Methods a host with the free license refuses with RestrictedVersion: the API is read-only there.
var restrictedMethods = map[string]bool{
	"ReconfigVM_Task": true, "CreateSnapshot_Task": true, "RemoveSnapshot_Task": true, "RemoveAllSnapshots_Task": true,
	"ConsolidateVMDisks_Task": true, "RevertToSnapshot_Task": true, "PowerOnVM_Task": true, "PowerOffVM_Task": true,
	"QueryChangedDiskAreas": true,
}

// esxFront wraps the front: it rewrites VM references between hostd's form (clients) and the
// simulator's (the front and the simulator), and answers the free-license switch.
type esxFront struct {
	inner   *front
	ready   int32 // set once the lab's own VMs exist: the lab's setup client speaks the simulator's refs
	mu      sync.Mutex
	license string // "" (licensed) or "free"
}

func newESXFront(inner *front) *esxFront { return &esxFront{inner: inner} }

func (e *esxFront) setReady() { atomic.StoreInt32(&e.ready, 1) }

func (e *esxFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if e.inner.restarting(w, r) {
		return
	}
	if r.URL.Path == "/lab/esx-license" {
		e.serveLicense(w, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, "/folder/") {
		// hostd's one datacenter: dcPath may be left out, any other name finds nothing
		if dc := r.URL.Query().Get("dcPath"); dc != "" && dc != "ha-datacenter" {
			http.NotFound(w, r)
			return
		}
	}
	sdk := r.Method == http.MethodPost && (r.URL.Path == "/sdk" || r.URL.Path == "/sdk/vimService")
	if !sdk || atomic.LoadInt32(&e.ready) == 0 {
		e.inner.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	method := ""
	if m := reMethod.FindSubmatch(body); m != nil {
		method = string(m[1])
	}
	e.mu.Lock()
	free := e.license == "free"
	e.mu.Unlock()
	if free && restrictedMethods[method] && e.inner.sessionOK(r) {
		writeFault(w, "RestrictedVersion", "Current license or ESXi version prohibits execution of the requested operation.", "")
		return
	}
	// A vCenter-style id names no VM on a host: keep it unresolvable rather than let the simulator find it.
	body = reSimVMRef.ReplaceAll(body, []byte("${1}esx-unknown-vm-${2}<"))
	body = reHostVMRef.ReplaceAll(body, []byte("${1}vm-${2}<"))
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	e.inner.ServeHTTP(rec, r2)
	out := reSimVMRef.ReplaceAll(rec.Body.Bytes(), []byte("${1}${2}<"))
	out = reBadVMRef.ReplaceAll(out, []byte("$1"))
	for k, vs := range rec.Header() {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(out)
}

// serveLicense: POST /lab/esx-license?edition=free|licensed (loopback, X-Lab-Token).
func (e *esxFront) serveLicense(w http.ResponseWriter, r *http.Request) {
	if !isLoopback(r.RemoteAddr) || r.Header.Get("X-Lab-Token") != e.inner.l.token {
		http.Error(w, "the lab control endpoint answers loopback clients with the X-Lab-Token header only", http.StatusUnauthorized)
		return
	}
	ed := r.URL.Query().Get("edition")
	if ed != "free" && ed != "licensed" {
		http.Error(w, `edition must be "free" or "licensed"`, http.StatusBadRequest)
		return
	}
	e.mu.Lock()
	e.license = map[string]string{"free": "free", "licensed": ""}[ed]
	e.mu.Unlock()
	writeJSON(w, map[string]interface{}{"edition": ed})
}

// sessionManagerID is the SessionManager's id in the running model ("SessionManager" on vCenter, "ha-sessionmgr" on a host).
func sessionManagerID() string {
	if si, ok := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance); ok && si.Content.SessionManager != nil {
		return si.Content.SessionManager.Value
	}
	return "SessionManager"
}
