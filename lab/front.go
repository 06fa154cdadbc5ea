package main

// The front handler: TLS on loopback, in front of the simulator's plain HTTP server.
// /sdk: answers QueryChangedDiskAreas and armed faults itself, forwards the rest, and runs
// the lab's hooks after snapshot and reconfigure tasks. /folder: serves snapshot views and
// forwards plain files to the simulator, for valid sessions only. /lab/: loopback control.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const sessionCookie = "vmware_soap_session"

var (
	reMethod   = regexp.MustCompile(`<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?([A-Za-z_]+)`)
	reReturnTk = regexp.MustCompile(`<returnval[^>]*>(task-[^<]+)</returnval>`)
)

func field(body []byte, name string) (string, bool) {
	re := regexp.MustCompile(`<(?:[\w-]+:)?` + regexp.QuoteMeta(name) + `(?:\s[^>]*)?>([^<]*)</`)
	m := re.FindSubmatch(body)
	if m == nil {
		return "", false
	}
	return html.UnescapeString(string(m[1])), true
}

type front struct {
	l       *lab
	backend *url.URL
	client  *http.Client
	proxy   *httputil.ReverseProxy
	stop    chan struct{}
	// restartUntil (unix ns, atomic): until then /sdk and /folder answer 503, as a restarting vCenter does (restart.go)
	restartUntil int64
}

func newFront(l *lab, backend *url.URL) *front {
	tr := &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 30 * time.Second}
	p := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: backend.Scheme, Host: backend.Host})
	p.Transport = tr
	return &front{l: l, backend: backend, client: &http.Client{Transport: tr}, proxy: p, stop: make(chan struct{})}
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.restarting(w, r) {
		return
	}
	switch {
	case r.URL.Path == "/sdk" || r.URL.Path == "/sdk/vimService":
		if r.Method == http.MethodPost {
			f.serveSDK(w, r)
			return
		}
		f.proxy.ServeHTTP(w, r)
	case strings.HasPrefix(r.URL.Path, "/folder/"):
		f.serveFolder(w, r)
	case strings.HasPrefix(r.URL.Path, "/lab/"):
		f.serveControl(w, r)
	default:
		f.proxy.ServeHTTP(w, r)
	}
}

func envelope(inner string) []byte {
	return []byte(`<?xml version="1.0" encoding="UTF-8"?>` +
		`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">` +
		`<soapenv:Body>` + inner + `</soapenv:Body></soapenv:Envelope>`)
}

func writeFault(w http.ResponseWriter, typ, msg, detail string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write(envelope(fmt.Sprintf(`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring>`+
		`<detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>`,
		html.EscapeString(msg), typ, typ, detail, typ)))
}

func (f *front) sessionOK(r *http.Request) bool {
	if r.Header.Get("X-Lab-Token") == f.l.token {
		return true
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	f.l.mu.Lock()
	defer f.l.mu.Unlock()
	return f.l.cookies[c.Value]
}

var taskKinds = map[string]string{
	"createSnapshot": "CreateSnapshot_Task", "removeSnapshot": "RemoveSnapshot_Task",
	"reconfigure": "ReconfigVM_Task", "removeAllSnapshots": "RemoveAllSnapshots_Task",
}

func methodOfKind(kind string) string {
	if m, ok := taskKinds[kind]; ok {
		return m
	}
	return kind
}

func (f *front) serveSDK(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m := reMethod.FindSubmatch(body)
	method := ""
	if m != nil {
		method = string(m[1])
	}
	if method == "QueryChangedDiskAreas" {
		if !f.sessionOK(r) {
			writeFault(w, "NotAuthenticated", "The session is not authenticated.", `<object type="VirtualMachine">vm</object><privilegeId>System.View</privilegeId>`)
			return
		}
		f.queryChangedDiskAreas(w, body)
		return
	}
	if method == "ContinueRetrievePropertiesEx" {
		tok, _ := field(body, "token")
		f.l.mu.Lock()
		rest, ok := f.l.pages[tok]
		delete(f.l.pages, tok)
		f.l.mu.Unlock()
		if ok && f.sessionOK(r) {
			f.writePage("ContinueRetrievePropertiesEx", w, rest.objs, rest.size)
			return
		}
	}
	this, _ := field(body, "_this")
	if strings.HasSuffix(method, "_Task") && f.sessionOK(r) {
		f.l.mu.Lock()
		armed := f.l.faults[method]
		if armed > 0 {
			f.l.faults[method] = armed - 1
		}
		f.l.mu.Unlock()
		if armed > 0 {
			f.failTask(w, method, this)
			return
		}
	}

	if method == "ReconfigVM_Task" && f.sessionOK(r) && f.reconfigDisks(w, this, body) {
		return
	}
	if method == "ConsolidateVMDisks_Task" && f.sessionOK(r) {
		f.consolidate(w, this)
		return
	}
	req, _ := http.NewRequest(http.MethodPost, f.backend.String(), bytes.NewReader(body))
	for _, h := range []string{"Content-Type", "SOAPAction", "Cookie", "User-Agent"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	res, err := f.client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()

	switch method {
	case "Login":
		for _, c := range res.Cookies() {
			if c.Name == sessionCookie {
				f.l.mu.Lock()
				f.l.cookies[c.Value] = true
				f.l.publishVddkSessions()
				f.l.mu.Unlock()
			}
		}
	case "Logout":
		if c, err := r.Cookie(sessionCookie); err == nil {
			f.l.mu.Lock()
			delete(f.l.cookies, c.Value)
			f.l.publishVddkSessions()
			f.l.mu.Unlock()
		}
	}
	// The simulator never pages; vCenter pages (also without maxObjects) and answers missingSet.
	if method == "RetrievePropertiesEx" && res.StatusCode == 200 && f.answerRetrieve(w, body, out) {
		return
	}
	if strings.HasSuffix(method, "_Task") && res.StatusCode == 200 {
		if tm := reReturnTk.FindSubmatch(out); tm != nil {
			f.afterTask(method, this, body, string(tm[1]))
		}
	}
	for _, h := range []string{"Content-Type", "Set-Cookie"} {
		for _, v := range res.Header.Values(h) {
			w.Header().Add(h, v)
		}
	}
	w.WriteHeader(res.StatusCode)
	_, _ = w.Write(out)
}

var reObjects = regexp.MustCompile(`(?s)<objects>.*?</objects>`)

// writePage answers with the first max objects and a token for the rest, like vCenter's RetrieveResult.
func (f *front) writePage(method string, w http.ResponseWriter, objs [][]byte, max int) {
	var sb strings.Builder
	if len(objs) > max {
		tok := randHex(8)
		f.l.mu.Lock()
		f.l.pages[tok] = labPage{objs: objs[max:], size: max}
		f.l.mu.Unlock()
		objs = objs[:max]
		sb.WriteString("<token>" + tok + "</token>")
	}
	for _, o := range objs {
		sb.Write(o)
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write(envelope(fmt.Sprintf(`<%sResponse xmlns="urn:vim25"><returnval>%s</returnval></%sResponse>`, method, sb.String(), method)))
}

func setConsolidationNeeded(ref string, on bool) {
	if vm := simVM(ref); vm != nil {
		simulator.Map.WithLock(vm, func() { vm.Runtime.ConsolidationNeeded = types.NewBool(on) })
	}
}

// consolidate implements ConsolidateVMDisks_Task, which the simulator lacks: the lab's layers are
// merged at snapshot removal already, so it only clears runtime.consolidationNeeded.
func (f *front) consolidate(w http.ResponseWriter, this string) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: this}
	task := simulator.CreateTask(ref, "consolidateVMDisks", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if simVM(this) == nil {
			return nil, &types.ManagedObjectNotFound{Obj: ref}
		}
		setConsolidationNeeded(this, false)
		return nil, nil
	})
	tref := task.Run()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write(envelope(fmt.Sprintf(`<ConsolidateVMDisks_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></ConsolidateVMDisks_TaskResponse>`, tref.Value)))
}

func getTask(ref string) *simulator.Task {
	t, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: ref}).(*simulator.Task)
	return t
}

func (f *front) afterTask(method, this string, body []byte, taskRef string) {
	t := getTask(taskRef)
	if t == nil {
		return
	}
	var info types.TaskInfo
	simulator.Map.WithLock(t, func() { info = t.Info })
	if info.State == types.TaskInfoStateSuccess {
		l := f.l
		l.mu.Lock()
		switch method {
		case "CreateSnapshot_Task":
			if v := l.vmsByRef[this]; v != nil {
				if ref, ok := info.Result.(types.ManagedObjectReference); ok {
					name, _ := field(body, "name")
					if err := l.afterSnapshotCreated(v, ref.Value, name); err != nil {
						logf("snapshot hook: %v", err)
					}
				}
			}
		case "RemoveSnapshot_Task":
			if v := l.snapOwner[this]; v != nil {
				rc, _ := field(body, "removeChildren")
				if err := l.afterSnapshotRemoved(v, this, rc == "true" || rc == "1"); err != nil {
					logf("consolidate hook: %v", err)
				}
				if l.faults["needConsolidation"] > 0 {
					l.faults["needConsolidation"]--
					setConsolidationNeeded(v.ref, true)
				}
			}
		case "RemoveAllSnapshots_Task":
			if v := l.vmsByRef[this]; v != nil && len(v.snaps) > 0 {
				if err := l.afterSnapshotRemoved(v, v.snaps[0].ref, true); err != nil {
					logf("consolidate hook: %v", err)
				}
			}
		case "ReconfigVM_Task":
			if v := l.vmsByRef[this]; v != nil {
				normalizeExtraConfig(this)
				l.syncTracking(v)
			}
		case "PowerOnVM_Task", "PowerOffVM_Task", "ResetVM_Task":
			if v := l.vmsByRef[this]; v != nil {
				l.syncTracking(v)
				l.stun(v)
			}
		}
		delay := l.delays[method]
		l.mu.Unlock()
		if delay > 0 {
			f.delayTask(t, info, delay)
		}
	}
}

// delayTask turns a finished task back into a running one that finishes after ms.
func (f *front) delayTask(t *simulator.Task, done types.TaskInfo, ms int) {
	simulator.Map.WithLock(t, func() {
		t.Info.State = types.TaskInfoStateRunning
		t.Info.Progress = 0
		t.Info.Result = nil
		t.Info.CompleteTime = nil
	})
	go func() {
		steps := 5
		for i := 1; i < steps; i++ {
			time.Sleep(time.Duration(ms/steps) * time.Millisecond)
			simulator.Map.WithLock(t, func() { t.Info.Progress = int32(i * 100 / steps) })
		}
		time.Sleep(time.Duration(ms/steps) * time.Millisecond)
		simulator.Map.WithLock(t, func() { t.Info = done })
	}()
}

func (f *front) failTask(w http.ResponseWriter, method, this string) {
	typ := "VirtualMachine"
	if method == "RemoveSnapshot_Task" {
		typ = "VirtualMachineSnapshot"
	}
	ref := types.ManagedObjectReference{Type: typ, Value: this}
	msg := fmt.Sprintf("An error occurred while running %s (injected by the lab)", method)
	task := simulator.CreateTask(ref, strings.TrimSuffix(method, "_Task"), func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, &types.SystemError{Reason: msg}
	})
	tref := task.Run()
	simulator.Map.WithLock(task, func() {
		if task.Info.Error != nil {
			task.Info.Error.LocalizedMessage = msg
		}
	})
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write(envelope(fmt.Sprintf(`<%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse>`, method, tref.Value, method)))
}

// serveFolder serves what a datastore holds: descriptors and base flat extents are the
// simulator's real files, delta extents (-00000j-sesparse.vmdk, -delta.vmdk) come from the lab's
// layers (deltas.go); a delta has no -flat file, vSAN no extent at all (404). Datastore access
// needs a valid session cookie, as on vCenter.
func (f *front) serveFolder(w http.ResponseWriter, r *http.Request) {
	if !f.sessionOK(r) {
		http.Error(w, "401 Unauthorized: no valid vmware_soap_session cookie", http.StatusUnauthorized)
		return
	}
	q := r.URL.Query()
	if !dcPathOK(q.Get("dcPath")) {
		http.NotFound(w, r)
		return
	}
	ds := r.URL.Query().Get("dsName")
	if ds == "" {
		ds = f.l.dsName
	}
	w = f.countFolder(w, ds, strings.TrimPrefix(r.URL.Path, "/folder/"))
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && f.serveDeltaExtent(w, r, ds, strings.TrimPrefix(r.URL.Path, "/folder/")) {
		return
	}
	f.proxy.ServeHTTP(w, r)
}

// serveView serves snapshot snapRef's view of a disk ("" = the live disk) with Range support.
func (f *front) serveView(w http.ResponseWriter, r *http.Request, v *labVM, d *disk, snapRef string) {
	l := f.l
	rd := &viewReader{d: d, n: func() (int, bool) {
		if snapRef == "" {
			return len(d.layers), true
		}
		i := v.snapIndex(snapRef)
		return i + 1, i >= 0
	}, lock: &l.mu}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(rd, 0, d.capacity))
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (f *front) serveControl(w http.ResponseWriter, r *http.Request) {
	if !isLoopback(r.RemoteAddr) {
		http.Error(w, "the lab control endpoint answers loopback clients only", http.StatusForbidden)
		return
	}
	if r.Header.Get("X-Lab-Token") != f.l.token {
		http.Error(w, "the lab control endpoint needs the X-Lab-Token header (token in lab.json)", http.StatusUnauthorized)
		return
	}
	l := f.l
	q := r.URL.Query()
	op := strings.TrimPrefix(r.URL.Path, "/lab/")
	bad := func(msg string) { http.Error(w, msg, http.StatusBadRequest) }
	vmOf := func() *labVM {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.vmsByName[q.Get("vm")]
	}
	switch op {
	case "write", "read", "view", "cbt-reset", "nbd":
		v := vmOf()
		if v == nil {
			bad(fmt.Sprintf("unknown VM %q", q.Get("vm")))
			return
		}
		key, _ := strconv.Atoi(q.Get("disk"))
		d := v.disk(int32(key))
		if d == nil {
			bad(fmt.Sprintf("VM %s has no disk with key %q", v.name, q.Get("disk")))
			return
		}
		off, _ := strconv.ParseInt(q.Get("offset"), 10, 64)
		switch op {
		case "write":
			data, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
			if err != nil {
				bad(err.Error())
				return
			}
			l.mu.Lock()
			l.syncTracking(v)
			l.mu.Unlock()
			if err := d.write(data, off); err != nil {
				bad(err.Error())
				return
			}
			writeJSON(w, map[string]interface{}{"vm": v.name, "disk": key, "offset": off, "length": len(data)})
		case "read":
			length, _ := strconv.ParseInt(q.Get("length"), 10, 64)
			snap := q.Get("snapshot")
			l.mu.Lock()
			d.mu.Lock()
			n := len(d.layers)
			if snap != "" {
				n = v.snapIndex(snap) + 1
			}
			var err error
			buf := make([]byte, length)
			if n == 0 {
				err = fmt.Errorf("unknown snapshot %s", snap)
			} else if err = d.checkRange(off, length); err == nil {
				err = d.readLayers(n, buf, off)
			}
			d.mu.Unlock()
			l.mu.Unlock()
			if err != nil {
				bad(err.Error())
				return
			}
			_, _ = w.Write(buf)
		case "view":
			if r.Header.Get("X-Lab-Token") != l.token {
				http.Error(w, "token required", http.StatusUnauthorized)
				return
			}
			key := trafficKey(v, d)
			f.serveView(countingWriter{w, func(n int64) { countTraffic(key, func(t *diskTraffic) { t.ViewBytes += n }) }}, r, v, d, q.Get("snapshot"))
		case "cbt-reset":
			l.mu.Lock()
			err := l.resetCBT(v, int32(key))
			l.mu.Unlock()
			if err != nil {
				bad(err.Error())
				return
			}
			writeJSON(w, map[string]interface{}{"ok": true})
		case "nbd":
			countTraffic(trafficKey(v, d), func(t *diskTraffic) { t.NbdExports++ })
			l.mu.Lock()
			e, err := l.startExport(v, q.Get("snapshot"), int32(key))
			l.mu.Unlock()
			if err != nil {
				bad(err.Error())
				return
			}
			writeJSON(w, map[string]interface{}{"uri": e.uri, "port": e.port, "host": "127.0.0.1"})
		}
	case "traffic":
		serveTraffic(w, r)
	case "cbt-mode":
		f.serveCbtMode(w, q)
	case "nbd-live":
		f.serveLiveNBD(w, r)
	case "fault":
		n, _ := strconv.Atoi(q.Get("count"))
		if n <= 0 {
			n = 1
		}
		l.mu.Lock()
		l.faults[methodOfKind(q.Get("kind"))] += n
		l.mu.Unlock()
		writeJSON(w, map[string]interface{}{"ok": true})
	case "delay":
		ms, _ := strconv.Atoi(q.Get("ms"))
		l.mu.Lock()
		l.delays[methodOfKind(q.Get("kind"))] = ms
		l.mu.Unlock()
		writeJSON(w, map[string]interface{}{"ok": true})
	case "clear-faults":
		l.mu.Lock()
		l.faults = map[string]int{}
		l.delays = map[string]int{}
		l.mu.Unlock()
		writeJSON(w, map[string]interface{}{"ok": true})
	case "expire-sessions":
		writeJSON(w, map[string]interface{}{"expired": f.expireSessions()})
	case "restart":
		ms, _ := strconv.Atoi(q.Get("ms"))
		writeJSON(w, map[string]interface{}{"expired": f.restart(time.Duration(ms) * time.Millisecond)})
	case "disk-add", "disk-remove":
		v := vmOf()
		if v == nil {
			bad(fmt.Sprintf("unknown VM %q", q.Get("vm")))
			return
		}
		key, _ := strconv.Atoi(q.Get("disk"))
		l.mu.Lock()
		defer l.mu.Unlock()
		if op == "disk-remove" {
			if err := l.removeDisk(v, int32(key)); err != nil {
				bad(err.Error())
				return
			}
			writeJSON(w, map[string]interface{}{"ok": true})
			return
		}
		capacity, _ := strconv.ParseInt(q.Get("capacity"), 10, 64)
		d, err := l.addDisk(v, int32(key), capacity)
		if err != nil {
			bad(err.Error())
			return
		}
		writeJSON(w, l.diskInfoOf(d))
	case "snapshots":
		v := vmOf()
		if v == nil {
			bad(fmt.Sprintf("unknown VM %q", q.Get("vm")))
			return
		}
		l.mu.Lock()
		var out []map[string]interface{}
		for i, s := range v.snaps {
			out = append(out, map[string]interface{}{"ref": s.ref, "name": s.name, "index": i, "changeIds": s.changeIds})
		}
		l.mu.Unlock()
		writeJSON(w, out)
	case "page-size", "deny", "allow", "disks":
		f.serveInventoryControl(w, r, op)
	case "stop":
		writeJSON(w, map[string]interface{}{"ok": true})
		select {
		case <-f.stop:
		default:
			close(f.stop)
		}
	default:
		http.NotFound(w, r)
	}
}
