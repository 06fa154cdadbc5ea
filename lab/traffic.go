package main

// What the lab served of each disk's data, so that a test can assert a disk was never read: bytes
// and requests of its extents over /folder (the datastore HTTP/NFC path: base flat files and
// snapshot delta extents), bytes of its point-in-time view over /lab/view, and the NBD exports asked
// for it over /lab/nbd (the nbd transport's server command). GET /lab/traffic answers them per
// "VM/key"; POST /lab/traffic?reset=1 clears them.

import (
	"fmt"
	"net/http"
	"sync"
)

type diskTraffic struct {
	FolderRequests int64 `json:"folderRequests"`
	FolderBytes    int64 `json:"folderBytes"`
	ViewBytes      int64 `json:"viewBytes"`
	NbdExports     int64 `json:"nbdExports"`
}

var traffic = struct {
	sync.Mutex
	disks map[string]*diskTraffic
}{disks: map[string]*diskTraffic{}}

func trafficKey(v *labVM, d *disk) string { return fmt.Sprintf("%s/%d", v.name, d.key) }

func countTraffic(key string, add func(t *diskTraffic)) {
	traffic.Lock()
	defer traffic.Unlock()
	t := traffic.disks[key]
	if t == nil {
		t = &diskTraffic{}
		traffic.disks[key] = t
	}
	add(t)
}

// countingWriter adds the body bytes written through it to a disk's counter.
type countingWriter struct {
	http.ResponseWriter
	add func(n int64)
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.add(int64(n))
	return n, err
}

// folderDisk names the disk whose data extent the /folder path rel on datastore ds is: its base
// flat file or one of its snapshot delta extents; "" for any other file (descriptors, logs, vmx).
func (l *lab) folderDisk(ds, rel string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range l.order {
		for _, d := range v.disks {
			m := l.metaOf(d)
			if m.dsName != ds {
				continue
			}
			if d.flatRel == rel {
				return trafficKey(v, d)
			}
			for j := 1; j <= len(v.snaps); j++ {
				if e := m.extentName(d.baseName, j); e != "" && relOf(e) == rel {
					return trafficKey(v, d)
				}
			}
		}
	}
	return ""
}

// countFolder wraps w so that what it serves of a disk's extent is counted.
func (f *front) countFolder(w http.ResponseWriter, ds, rel string) http.ResponseWriter {
	key := f.l.folderDisk(ds, rel)
	if key == "" {
		return w
	}
	countTraffic(key, func(t *diskTraffic) { t.FolderRequests++ })
	return countingWriter{w, func(n int64) { countTraffic(key, func(t *diskTraffic) { t.FolderBytes += n }) }}
}

func serveTraffic(w http.ResponseWriter, r *http.Request) {
	traffic.Lock()
	defer traffic.Unlock()
	if r.Method == http.MethodPost && r.URL.Query().Get("reset") == "1" {
		traffic.disks = map[string]*diskTraffic{}
	}
	writeJSON(w, traffic.disks)
}
