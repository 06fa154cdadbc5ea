package main

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// A vCenter restart as a client sees it: every session ends (vpxd keeps none across a restart) and,
// while vpxd starts again, the reverse proxy in front of it answers /sdk and /folder with
// 503 Service Unavailable. Tasks and inventory survive, as vCenter's database keeps them.
func (f *front) restart(d time.Duration) int {
	atomic.StoreInt64(&f.restartUntil, time.Now().Add(d).UnixNano())
	return f.expireSessions()
}

// restarting answers 503 for /sdk and /folder during a restart window; false when the request may go on.
func (f *front) restarting(w http.ResponseWriter, r *http.Request) bool {
	until := atomic.LoadInt64(&f.restartUntil)
	if until == 0 || time.Now().UnixNano() >= until {
		return false
	}
	if !strings.HasPrefix(r.URL.Path, "/sdk") && !strings.HasPrefix(r.URL.Path, "/folder/") {
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
	w.Header().Set("Connection", "close")
	http.Error(w, "503 Service Unavailable (the lab's vCenter is restarting)", http.StatusServiceUnavailable)
	return true
}

// expireSessions ends every session (clients get NotAuthenticated) and returns how many there were.
func (f *front) expireSessions() int {
	l := f.l
	l.mu.Lock()
	var cookies []string
	for c := range l.cookies {
		cookies = append(cookies, c)
	}
	l.cookies = map[string]bool{}
	l.publishVddkSessions()
	l.mu.Unlock()
	for _, c := range cookies {
		req, _ := http.NewRequest(http.MethodPost, f.backend.String(), strings.NewReader(string(envelope(
			`<Logout xmlns="urn:vim25"><_this type="SessionManager">`+sessionManagerID()+`</_this></Logout>`))))
		req.Header.Set("Content-Type", "text/xml")
		req.Header.Set("Cookie", sessionCookie+"="+c)
		if res, err := f.client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}
	return len(cookies)
}
