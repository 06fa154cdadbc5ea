/*
 * A test double of libvixDiskLib over local flat files, with the real library's ABI
 * (vixDiskLib-abi.h), so vmlift's koffi binding is exercised for real in tests.
 *
 * Behaviour the tests rely on:
 * - InitEx's configFile is read as key=value lines:
 *     datastores=DIR     "[ds] dir/x.vmdk" resolves to DIR/ds/dir/x-flat.vmdk (or x.vmdk if no -flat file)
 *     user=U password=P  credentials a remote connection must present (credType UID)
 *     cookie=C           session cookie accepted instead (credType SESSIONID)
 *     thumbprint=T       the thumbprint a remote connection must pin
 *     transports=a:b     transports this "host" offers (default nbdssl:nbd)
 *     fail_sector=S      reads covering sector S fail with VIX_E_DISK_NOIO
 *     busy_reads=N       the first N reads fail with VIX_E_OBJECT_IS_BUSY (transient)
 *     no_query_blocks=1  QueryAllocatedBlocks answers VIX_E_NOT_SUPPORTED
 *     lab_map=FILE       remote disks are the lab's point-in-time views (lab/vddk_map.go): Open resolves
 *                        (vmxSpec moref, snapshotRef, disk path as the snapshot's config names it) to
 *                        an NBD export read with libnbd. The map also names the user, password file,
 *                        SHA-1 thumbprint and session cookies the "vCenter" accepts (config lines win).
 *                        Unknown moref or snapshot: VIX_E_OBJECT_NOT_FOUND; unknown path:
 *                        VIX_E_FILE_NOT_FOUND; no snapshotRef: VIX_E_FILE_ACCESS_ERROR (the running
 *                        VM holds the live disk).
 *     nfc_alloc_fail=N   the next N reads fail as NFC's "failed to allocate" does: VIX_E_OUT_OF_MEMORY,
 *                        with the NFC error 5 and DiskLib 802 lines through the warn/log callbacks
 *     nfc_max_read=B     every read longer than B bytes fails that way (the host's NFC buffer limit)
 *     nbd_conns=N        NBD connections (and ReadAsync worker threads) per lab_map handle (default 4)
 *     auth_fail=N        the next N remote ConnectEx fail as a refused login (VIX_E_HOST_USER_PERMISSIONS)
 *     stats_file=FILE    (or env VMLIFT_VDDK_DOUBLE_STATS) rewritten after every Connect, Disconnect,
 *                        Open, Close and Exit: connections=, handles= (open now), connects=, opens=,
 *                        nfc_errors= (totals); Exit also logs the open connections and handles.
 * - With no serverName the connection is local: paths are plain file names, transport "file".
 * - ReadAsync runs on worker threads of the handle (one over a file, nbd_conns over NBD) that call
 *   the completion callback there, as the real library does; Wait blocks until the queue is empty.
 * - Every call logs through the registered log callback with a real va_list.
 */
#define _GNU_SOURCE
#include "vixDiskLib-abi.h"

#include <errno.h>
#include <libnbd.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static VixDiskLibGenericLogFunc *g_log, *g_warn, *g_panic;
static int g_inited;
static char g_datastores[4096], g_user[256], g_password[256], g_cookie[1024], g_thumb[256];
static char g_transports[256] = "nbdssl:nbd";
static long long g_fail_sector = -1;
static int g_busy_reads;
static int g_no_query_blocks;
static char g_lab_map[4096], g_stats_file[4096];
static int g_nfc_alloc_fail, g_auth_fail;
static long long g_nfc_max_read;
static int g_nbd_conns = 4;
/* open now, and totals since InitEx */
static int g_conns, g_handles, g_connects, g_opens, g_nfc_errors;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static void say(VixDiskLibGenericLogFunc *f, const char *fmt, ...) {
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  f(fmt, ap);
  va_end(ap);
}
#define LOG(...) say(g_log, __VA_ARGS__)
#define WARN(...) say(g_warn, __VA_ARGS__)

struct conn {
  int remote;
  char transport[32];
  int readOnly;
  char moref[128];
  char snapshot[128];
};

#define MAX_WORKERS 16
struct disk;
struct job {
  struct job *next;
  struct disk *d;
  uint64_t start, n;
  uint8_t *buf;
  VixDiskLibCompletionCB cb;
  void *cbData;
};

struct disk {
  int fd;                     /* a local or datastores-mode file, or -1 */
  struct nbd_handle *nbd;     /* lab_map mode: the lab's NBD export of the disk at the snapshot */
  int extents;                /* the export answers base:allocation */
  uint64_t sectors;
  struct conn *conn;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct job *head, *tail;
  int busy, stop, nworkers;
  pthread_t workers[MAX_WORKERS];
  char uri[1024];
};

/* Writes the counters where tests can read them; callers hold g_mu. */
static void write_stats(void) {
  const char *f = g_stats_file[0] ? g_stats_file : getenv("VMLIFT_VDDK_DOUBLE_STATS");
  if (!f || !*f) return;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", f);
  FILE *o = fopen(tmp, "w");
  if (!o) return;
  fprintf(o, "connections=%d\nhandles=%d\nconnects=%d\nopens=%d\nnfc_errors=%d\n", g_conns, g_handles, g_connects, g_opens, g_nfc_errors);
  fclose(o);
  rename(tmp, f);
}

static void count(int *what, int delta, int *total) {
  pthread_mutex_lock(&g_mu);
  *what += delta;
  if (total && delta > 0) *total += delta;
  write_stats();
  pthread_mutex_unlock(&g_mu);
}

static void trim(char *s) {
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
}

static void read_config(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) { WARN("VixDiskLib: cannot read config file %s: %s\n", path, strerror(errno)); return; }
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    trim(line);
    char *eq = strchr(line, '=');
    if (!eq || line[0] == '#') continue;
    *eq = 0;
    const char *k = line, *v = eq + 1;
    if (!strcmp(k, "datastores")) snprintf(g_datastores, sizeof g_datastores, "%s", v);
    else if (!strcmp(k, "user")) snprintf(g_user, sizeof g_user, "%s", v);
    else if (!strcmp(k, "password")) snprintf(g_password, sizeof g_password, "%s", v);
    else if (!strcmp(k, "cookie")) snprintf(g_cookie, sizeof g_cookie, "%s", v);
    else if (!strcmp(k, "thumbprint")) snprintf(g_thumb, sizeof g_thumb, "%s", v);
    else if (!strcmp(k, "transports")) snprintf(g_transports, sizeof g_transports, "%s", v);
    else if (!strcmp(k, "fail_sector")) g_fail_sector = atoll(v);
    else if (!strcmp(k, "busy_reads")) g_busy_reads = atoi(v);
    else if (!strcmp(k, "no_query_blocks")) g_no_query_blocks = atoi(v);
    else if (!strcmp(k, "lab_map")) snprintf(g_lab_map, sizeof g_lab_map, "%s", v);
    else if (!strcmp(k, "nfc_alloc_fail")) g_nfc_alloc_fail = atoi(v);
    else if (!strcmp(k, "nfc_max_read")) g_nfc_max_read = atoll(v);
    else if (!strcmp(k, "auth_fail")) g_auth_fail = atoi(v);
    else if (!strcmp(k, "nbd_conns")) g_nbd_conns = atoi(v) < 1 ? 1 : atoi(v) > MAX_WORKERS ? MAX_WORKERS : atoi(v);
    else if (!strcmp(k, "stats_file")) snprintf(g_stats_file, sizeof g_stats_file, "%s", v);
  }
  fclose(f);
}

VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
                           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
                           const char *libDir, const char *configFile) {
  if (major < 6) return VIX_E_NOT_SUPPORTED;
  g_log = log; g_warn = warn; g_panic = panic;
  g_fail_sector = -1; g_busy_reads = 0; g_no_query_blocks = 0;
  g_nfc_alloc_fail = g_auth_fail = 0; g_nfc_max_read = 0; g_nbd_conns = 4;
  g_conns = g_handles = g_connects = g_opens = g_nfc_errors = 0;
  g_datastores[0] = g_user[0] = g_password[0] = g_cookie[0] = g_thumb[0] = 0;
  g_lab_map[0] = g_stats_file[0] = 0;
  snprintf(g_transports, sizeof g_transports, "nbdssl:nbd");
  if (configFile && *configFile) read_config(configFile);
  g_inited = 1;
  pthread_mutex_lock(&g_mu);
  write_stats();
  pthread_mutex_unlock(&g_mu);
  LOG("VixDiskLib: double initialized, API %u.%u, libDir %s\n", major, minor, libDir ? libDir : "(null)");
  return VIX_OK;
}

void VixDiskLib_Exit(void) {
  pthread_mutex_lock(&g_mu);
  int c = g_conns, h = g_handles;
  write_stats();
  pthread_mutex_unlock(&g_mu);
  LOG("VixDiskLib: exit, %d connection(s) and %d disk handle(s) left open\n", c, h);
  if (c || h) WARN("VixDiskLib: Exit called with %d connection(s) and %d disk handle(s) still open\n", c, h);
  g_inited = 0;
}

/* ---- lab_map mode ---- */

struct labmap {
  char user[256], password_file[4096], thumbprint[256], sessions_file[4096];
};

/* Splits a map line at tabs into at most n fields; returns the count. */
static int fields(char *line, char **f, int n) {
  int k = 0;
  for (char *p = line; k < n; ) {
    f[k++] = p;
    char *t = strchr(p, '\t');
    if (!t) break;
    *t = 0;
    p = t + 1;
  }
  return k;
}

static int read_labmap_header(struct labmap *m) {
  memset(m, 0, sizeof *m);
  FILE *f = fopen(g_lab_map, "r");
  if (!f) { WARN("VixDiskLib: cannot read the lab map %s: %s\n", g_lab_map, strerror(errno)); return 0; }
  char line[8192];
  while (fgets(line, sizeof line, f)) {
    trim(line);
    char *v[6];
    if (line[0] == '#' || fields(line, v, 6) != 2) continue;
    if (!strcmp(v[0], "user")) snprintf(m->user, sizeof m->user, "%s", v[1]);
    else if (!strcmp(v[0], "password_file")) snprintf(m->password_file, sizeof m->password_file, "%s", v[1]);
    else if (!strcmp(v[0], "thumbprint")) snprintf(m->thumbprint, sizeof m->thumbprint, "%s", v[1]);
    else if (!strcmp(v[0], "sessions_file")) snprintf(m->sessions_file, sizeof m->sessions_file, "%s", v[1]);
  }
  fclose(f);
  return 1;
}

static void first_line_of(const char *file, char *out, size_t outlen) {
  out[0] = 0;
  FILE *f = fopen(file, "r");
  if (!f) return;
  if (fgets(out, (int)outlen, f)) trim(out);
  fclose(f);
}

/* vmware_soap_session="abc" or abc -> abc */
static void bare_cookie(const char *in, char *out, size_t outlen) {
  const char *p = in;
  const char *eq = strchr(p, '=');
  if (eq && !strncmp(p, "vmware_soap_session", 19)) p = eq + 1;
  while (*p == ' ' || *p == '"') p++;
  snprintf(out, outlen, "%s", p);
  char *semi = strchr(out, ';');
  if (semi) *semi = 0;
  size_t n = strlen(out);
  while (n && (out[n - 1] == '"' || out[n - 1] == ' ')) out[--n] = 0;
}

static int cookie_listed(const char *file, const char *cookie) {
  char want[1024];
  bare_cookie(cookie, want, sizeof want);
  if (!want[0]) return 0;
  FILE *f = fopen(file, "r");
  if (!f) return 0;
  char line[1024];
  int ok = 0;
  while (!ok && fgets(line, sizeof line, f)) {
    trim(line);
    ok = line[0] && !strcmp(line, want);
  }
  fclose(f);
  return ok;
}

/* Finds (moref, snapshot, path) in the lab map: VIX_OK with the NBD URI, or the error VDDK gives. */
static VixError labmap_lookup(const char *moref, const char *snap, const char *path, char *uri, size_t urilen) {
  FILE *f = fopen(g_lab_map, "r");
  if (!f) { WARN("VixDiskLib: cannot read the lab map %s: %s\n", g_lab_map, strerror(errno)); return VIX_E_FAIL; }
  char line[8192];
  int vm = 0, sn = 0;
  VixError e = VIX_E_OBJECT_NOT_FOUND;
  while (fgets(line, sizeof line, f)) {
    trim(line);
    char *v[6];
    int k = fields(line, v, 6);
    if (k == 2 && !strcmp(v[0], "vm") && !strcmp(v[1], moref)) vm = 1;
    if (k != 6 || strcmp(v[0], "disk") || strcmp(v[1], moref)) continue;
    vm = 1;
    if (strcmp(v[2], snap)) continue;
    sn = 1;
    if (strcmp(v[3], path)) continue;
    snprintf(uri, urilen, "%s", v[4]);
    e = VIX_OK;
    break;
  }
  fclose(f);
  if (e == VIX_OK) return e;
  if (!vm) { WARN("VixDiskLib: the managed object moref=%s was not found (ManagedObjectNotFound)\n", moref); return VIX_E_OBJECT_NOT_FOUND; }
  if (!sn) { WARN("VixDiskLib: VM %s has no snapshot %s (ManagedObjectNotFound)\n", moref, snap); return VIX_E_OBJECT_NOT_FOUND; }
  WARN("VixDiskLib: snapshot %s of %s has no disk \"%s\"\n", snap, moref, path);
  return VIX_E_FILE_NOT_FOUND;
}

VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void) {
  return calloc(1, sizeof(VixDiskLibConnectParams));
}

void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *p) { free(p); }

/* The first mode of `wanted` (colon separated) that this "host" offers. */
static int pick_transport(const char *wanted, char *out, size_t outlen) {
  char w[256];
  snprintf(w, sizeof w, "%s", wanted && *wanted ? wanted : g_transports);
  for (char *save = NULL, *t = strtok_r(w, ":", &save); t; t = strtok_r(NULL, ":", &save)) {
    char offer[256];
    snprintf(offer, sizeof offer, "%s", g_transports);
    for (char *s2 = NULL, *o = strtok_r(offer, ":", &s2); o; o = strtok_r(NULL, ":", &s2)) {
      if (!strcmp(t, o)) { snprintf(out, outlen, "%s", t); return 1; }
    }
  }
  return 0;
}

VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *p, char readOnly, const char *snapshotRef,
                              const char *transportModes, VixDiskLibConnection *connection) {
  if (!g_inited) return VIX_E_FAIL;
  if (!p || !connection) return VIX_E_INVALID_ARG;
  struct conn *c = calloc(1, sizeof *c);
  if (!c) return VIX_E_OUT_OF_MEMORY;
  c->readOnly = readOnly;
  if (!p->serverName || !*p->serverName) {
    snprintf(c->transport, sizeof c->transport, "file");
    LOG("VixDiskLib: local connection, readOnly %d\n", (int)readOnly);
    *connection = c;
    count(&g_conns, 1, &g_connects);
    return VIX_OK;
  }
  c->remote = 1;
  const char *user = p->credType == VIXDISKLIB_CRED_UID ? p->creds.uid.userName
                   : p->credType == VIXDISKLIB_CRED_SESSIONID ? p->creds.sessionId.userName : NULL;
  /* Echo every field so tests can check that the layout arrived intact (no secrets). */
  LOG("VixDiskLib: connect server=%s port=%u nfcHostPort=%u vmxSpec=%s thumbPrint=%s credType=%d user=%s "
      "snapshotRef=%s transportModes=%s readOnly=%d specType=%d\n",
      p->serverName, p->port, p->nfcHostPort, p->vmxSpec ? p->vmxSpec : "(null)", p->thumbPrint ? p->thumbPrint : "(null)",
      (int)p->credType, user ? user : "(null)", snapshotRef ? snapshotRef : "(null)",
      transportModes ? transportModes : "(null)", (int)readOnly, (int)p->specType);
  if (!p->vmxSpec || strncmp(p->vmxSpec, "moref=", 6) != 0) { free(c); return VIX_E_INVALID_ARG; }
  snprintf(c->moref, sizeof c->moref, "%s", p->vmxSpec + 6);
  snprintf(c->snapshot, sizeof c->snapshot, "%s", snapshotRef ? snapshotRef : "");
  /* What this "vCenter" accepts: the config's lines, else the lab map's. */
  char want_user[256], password[256], thumb[256];
  struct labmap m = {0};
  if (g_lab_map[0] && !read_labmap_header(&m)) { free(c); return VIX_E_FAIL; }
  snprintf(want_user, sizeof want_user, "%s", g_user[0] ? g_user : m.user);
  snprintf(thumb, sizeof thumb, "%s", g_thumb[0] ? g_thumb : m.thumbprint);
  if (g_password[0]) snprintf(password, sizeof password, "%s", g_password);
  else first_line_of(m.password_file, password, sizeof password);
  if (thumb[0] && (!p->thumbPrint || strcasecmp(p->thumbPrint, thumb) != 0)) {
    WARN("VixDiskLib: SSL thumbprint mismatch for %s\n", p->serverName);
    free(c);
    return VIX_E_HOST_USER_PERMISSIONS;
  }
  int ok = 0;
  if (p->credType == VIXDISKLIB_CRED_UID) {
    ok = p->creds.uid.userName && p->creds.uid.password && want_user[0] && password[0] &&
         !strcmp(p->creds.uid.userName, want_user) && !strcmp(p->creds.uid.password, password);
  } else if (p->credType == VIXDISKLIB_CRED_SESSIONID && p->creds.sessionId.cookie) {
    char a[1024], b[1024];
    bare_cookie(p->creds.sessionId.cookie, a, sizeof a);
    bare_cookie(g_cookie, b, sizeof b);
    ok = (b[0] && !strcmp(a, b)) || (!g_cookie[0] && m.sessions_file[0] && cookie_listed(m.sessions_file, p->creds.sessionId.cookie));
  }
  pthread_mutex_lock(&g_mu);
  if (ok && g_auth_fail > 0) { g_auth_fail--; ok = 0; }
  pthread_mutex_unlock(&g_mu);
  if (!ok) {
    WARN("VixDiskLib: login to %s failed: Cannot complete login due to an incorrect user name or password.\n", p->serverName);
    free(c);
    return VIX_E_HOST_USER_PERMISSIONS;
  }
  if (!pick_transport(transportModes, c->transport, sizeof c->transport)) {
    WARN("VixDiskLib: none of the transports %s is available\n", transportModes ? transportModes : "");
    free(c);
    return VIX_E_NOT_SUPPORTED;
  }
  *connection = c;
  count(&g_conns, 1, &g_connects);
  return VIX_OK;
}

VixError VixDiskLib_Disconnect(VixDiskLibConnection connection) {
  if (!connection) return VIX_E_INVALID_ARG;
  free(connection);
  count(&g_conns, -1, NULL);
  LOG("VixDiskLib: disconnected\n");
  return VIX_OK;
}

/* "[ds] dir/name.vmdk" -> DATASTORES/ds/dir/name-flat.vmdk (or name.vmdk). */
static int resolve(const struct conn *c, const char *path, char *out, size_t outlen) {
  if (!c->remote) { snprintf(out, outlen, "%s", path); return 1; }
  const char *close = strchr(path, ']');
  if (path[0] != '[' || !close || !g_datastores[0]) return 0;
  char ds[256];
  size_t dl = (size_t)(close - path - 1);
  if (dl >= sizeof ds) return 0;
  memcpy(ds, path + 1, dl);
  ds[dl] = 0;
  const char *rel = close + 1;
  while (*rel == ' ') rel++;
  if (strstr(rel, "..")) return 0;
  char base[4096];
  if ((size_t)snprintf(base, sizeof base, "%s/%s/%s", g_datastores, ds, rel) >= sizeof base) return 0;
  size_t bl = strlen(base);
  if (bl > 5 && !strcmp(base + bl - 5, ".vmdk")) {
    base[bl - 5] = 0;
    snprintf(out, outlen, "%s-flat.vmdk", base);
    struct stat st;
    if (stat(out, &st) == 0) return 1;
    base[bl - 5] = '.';
  }
  snprintf(out, outlen, "%s", base);
  return 1;
}

/* Injected faults of one read, before any I/O: VIX_OK when the read may go ahead. */
static VixError read_faults(uint64_t start, uint64_t n) {
  if (g_fail_sector >= 0 && (uint64_t)g_fail_sector >= start && (uint64_t)g_fail_sector < start + n) {
    WARN("VixDiskLib: injected I/O error at sector %lld\n", g_fail_sector);
    return VIX_E_DISK_NOIO;
  }
  size_t len = (size_t)n * VIXDISKLIB_SECTOR_SIZE;
  pthread_mutex_lock(&g_mu);
  int busy = g_busy_reads > 0 ? g_busy_reads-- : 0;
  int nfc = !busy && ((g_nfc_max_read > 0 && (long long)len > g_nfc_max_read) || (g_nfc_alloc_fail > 0 ? g_nfc_alloc_fail-- : 0));
  if (nfc) { g_nfc_errors++; write_stats(); }
  pthread_mutex_unlock(&g_mu);
  if (busy) return VIX_E_OBJECT_IS_BUSY;
  if (nfc) {
    /* What VDDK logs when the host's NFC server cannot buffer a read (24 bytes of NFC header). */
    WARN("[NFC ERROR] NfcFssrvrProcessErrorMsg: received NFC error 5 from server: Failed to allocate the requested %zu bytes\n", len + 24);
    LOG("VixDiskLib: VixDiskLib_Read: Read %llu sectors at %llu failed. Error 2 (Memory allocation failed. Out of memory.) "
        "(DiskLib error 802: NBD_ERR_INSUFFICIENT_RESOURCES)\n", (unsigned long long)n, (unsigned long long)start);
    return VIX_E_OUT_OF_MEMORY;
  }
  return VIX_OK;
}

static VixError read_on(struct disk *d, struct nbd_handle *h, uint64_t start, uint64_t n, uint8_t *buf);

static void finish(struct job *j, VixError e) {
  struct disk *d = j->d;
  j->cb(j->cbData, e);
  free(j);
  pthread_mutex_lock(&d->mu);
  d->busy--;
  pthread_cond_broadcast(&d->cv);
  pthread_mutex_unlock(&d->mu);
}

/*
 * The ReadAsync queue of a handle runs on worker threads that call the completion callbacks, as
 * VDDK's own threads do. Over NBD each worker has its own connection to the export (libnbd's
 * handles serialize their callers), so the workers' reads and callbacks overlap.
 */
static void *worker_main(void *arg) {
  struct disk *d = arg;
  struct nbd_handle *h = NULL;
  if (d->nbd) {
    h = nbd_create();
    if (h && nbd_connect_uri(h, d->uri) < 0) {
      WARN("VixDiskLib: extra NBD connection failed, sharing the handle's: %s\n", nbd_get_error());
      nbd_close(h);
      h = NULL;
    }
  }
  pthread_mutex_lock(&d->mu);
  for (;;) {
    while (!d->head && !d->stop) pthread_cond_wait(&d->cv, &d->mu);
    if (!d->head && d->stop) break;
    struct job *j = d->head;
    d->head = j->next;
    if (!d->head) d->tail = NULL;
    pthread_mutex_unlock(&d->mu);
    finish(j, read_on(d, h, j->start, j->n, j->buf));
    pthread_mutex_lock(&d->mu);
  }
  pthread_mutex_unlock(&d->mu);
  if (h) { nbd_shutdown(h, 0); nbd_close(h); }
  return NULL;
}

/* lab_map mode: the lab's NBD export of (moref, snapshot, path). */
static VixError open_lab(struct disk *d, const struct conn *c, const char *path) {
  if (!c->snapshot[0]) {
    WARN("VixDiskLib: %s is in use by the running VM %s; open it at a snapshot (snapshotRef)\n", path, c->moref);
    return VIX_E_FILE_ACCESS_ERROR;
  }
  char uri[1024];
  VixError e = labmap_lookup(c->moref, c->snapshot, path, uri, sizeof uri);
  if (e != VIX_OK) return e;
  struct nbd_handle *h = nbd_create();
  if (!h) return VIX_E_OUT_OF_MEMORY;
  nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (nbd_connect_uri(h, uri) < 0) {
    WARN("[NFC ERROR] NfcNewAuthdConnectionEx: Failed to connect to peer. Error: %s\n", nbd_get_error());
    nbd_close(h);
    return VIX_E_FAIL;
  }
  int64_t size = nbd_get_size(h);
  if (size < 0) { nbd_close(h); return VIX_E_FAIL; }
  d->nbd = h;
  snprintf(d->uri, sizeof d->uri, "%s", uri);
  d->extents = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  d->sectors = (uint64_t)size / VIXDISKLIB_SECTOR_SIZE;
  return VIX_OK;
}

VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags, VixDiskLibHandle *handle) {
  const struct conn *c = connection;
  if (!c || !path || !handle) return VIX_E_INVALID_ARG;
  struct disk *d = calloc(1, sizeof *d);
  if (!d) return VIX_E_OUT_OF_MEMORY;
  d->fd = -1;
  if (c->remote && g_lab_map[0]) {
    VixError e = open_lab(d, c, path);
    if (e != VIX_OK) { free(d); return e; }
  } else {
    char file[4096];
    if (!resolve(c, path, file, sizeof file)) { free(d); return VIX_E_INVALID_ARG; }
    int fd = open(file, (flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY) ? O_RDONLY : O_RDWR);
    if (fd < 0) {
      int err = errno;
      WARN("VixDiskLib: cannot open %s: %s\n", path, strerror(err));
      free(d);
      return err == ENOENT ? VIX_E_FILE_NOT_FOUND : VIX_E_FILE_ERROR;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); free(d); return VIX_E_FILE_ERROR; }
    d->fd = fd;
    d->sectors = (uint64_t)st.st_size / VIXDISKLIB_SECTOR_SIZE;
  }
  d->conn = (struct conn *)c;
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cv, NULL);
  LOG("VixDiskLib: opened %s (%llu sectors) flags %u transport %s\n", path, (unsigned long long)d->sectors, flags, c->transport);
  count(&g_handles, 1, &g_opens);
  *handle = d;
  return VIX_OK;
}

VixError VixDiskLib_Close(VixDiskLibHandle handle) {
  struct disk *d = handle;
  if (!d) return VIX_E_INVALID_ARG;
  pthread_mutex_lock(&d->mu);
  d->stop = 1;
  pthread_cond_broadcast(&d->cv);
  pthread_mutex_unlock(&d->mu);
  for (int i = 0; i < d->nworkers; i++) pthread_join(d->workers[i], NULL);
  if (d->fd >= 0) close(d->fd);
  if (d->nbd) { nbd_shutdown(d->nbd, 0); nbd_close(d->nbd); }
  free(d);
  count(&g_handles, -1, NULL);
  LOG("VixDiskLib: closed\n");
  return VIX_OK;
}

VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info) {
  struct disk *d = handle;
  if (!d || !info) return VIX_E_INVALID_ARG;
  VixDiskLibInfo *i = calloc(1, sizeof *i);
  if (!i) return VIX_E_OUT_OF_MEMORY;
  i->biosGeo.cylinders = (uint32_t)(d->sectors / (255 * 63));
  i->biosGeo.heads = 255;
  i->biosGeo.sectors = 63;
  i->physGeo = i->biosGeo;
  i->capacity = d->sectors;
  i->adapterType = VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
  i->numLinks = 1;
  i->uuid = strdup("60 00 C2 9b 00 00 00 00-00 00 00 00 00 00 00 01");
  *info = i;
  return VIX_OK;
}

void VixDiskLib_FreeInfo(VixDiskLibInfo *info) {
  if (!info) return;
  free(info->parentFileNameHint);
  free(info->uuid);
  free(info);
}

const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle) {
  struct disk *d = handle;
  return d ? d->conn->transport : "file";
}

VixError VixDiskLib_Read(VixDiskLibHandle handle, VixDiskLibSectorType start, VixDiskLibSectorType n, uint8_t *buf) {
  struct disk *d = handle;
  if (!d || !buf) return VIX_E_INVALID_ARG;
  return read_on(d, NULL, start, n, buf);
}

/* One read, over `h` (a worker's own NBD connection) or the handle's file or connection. */
static VixError read_on(struct disk *d, struct nbd_handle *h, uint64_t start, uint64_t n, uint8_t *buf) {
  if (start > d->sectors || n > d->sectors - start) return VIX_E_DISK_OUTOFRANGE;
  VixError e = read_faults(start, n);
  if (e != VIX_OK) return e;
  size_t len = (size_t)n * VIXDISKLIB_SECTOR_SIZE;
  off_t off = (off_t)start * VIXDISKLIB_SECTOR_SIZE;
  if (d->nbd) {
    if (nbd_pread(h ? h : d->nbd, buf, len, (uint64_t)off, 0) < 0) {
      WARN("VixDiskLib: NBD read of %llu sectors at %llu failed: %s\n", (unsigned long long)n, (unsigned long long)start, nbd_get_error());
      return VIX_E_DISK_NOIO;
    }
    return VIX_OK;
  }
  size_t done = 0;
  while (done < len) {
    ssize_t r = pread(d->fd, buf + done, len - done, off + (off_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return VIX_E_FILE_ERROR;
    done += (size_t)r;
  }
  return VIX_OK;
}

VixError VixDiskLib_ReadAsync(VixDiskLibHandle handle, VixDiskLibSectorType start, VixDiskLibSectorType n,
                              uint8_t *buf, VixDiskLibCompletionCB cb, void *cbData) {
  struct disk *d = handle;
  if (!d || !buf || !cb) return VIX_E_INVALID_ARG;
  if (start > d->sectors || n > d->sectors - start) return VIX_E_DISK_OUTOFRANGE;
  struct job *j = calloc(1, sizeof *j);
  if (!j) return VIX_E_OUT_OF_MEMORY;
  j->d = d; j->start = start; j->n = n; j->buf = buf; j->cb = cb; j->cbData = cbData;
  pthread_mutex_lock(&d->mu);
  while (d->nworkers < (d->nbd ? g_nbd_conns : 1)) {
    if (pthread_create(&d->workers[d->nworkers], NULL, worker_main, d) != 0) break;
    d->nworkers++;
  }
  if (!d->nworkers) { pthread_mutex_unlock(&d->mu); free(j); return VIX_E_FAIL; }
  if (d->tail) d->tail->next = j; else d->head = j;
  d->tail = j;
  d->busy++;
  pthread_cond_broadcast(&d->cv);
  pthread_mutex_unlock(&d->mu);
  return VIX_ASYNC;
}

VixError VixDiskLib_Wait(VixDiskLibHandle handle) {
  struct disk *d = handle;
  if (!d) return VIX_E_INVALID_ARG;
  pthread_mutex_lock(&d->mu);
  while (d->busy > 0) pthread_cond_wait(&d->cv, &d->mu);
  pthread_mutex_unlock(&d->mu);
  return VIX_OK;
}

/* Blocks of a QueryAllocatedBlocks answer, in sectors, merged as they come. */
struct blist { VixDiskLibBlockList *l; size_t cap; uint64_t chunk; int oom; };

/* Adds the data bytes [s, e), widened to chunk boundaries and clipped to `end`. */
static void blist_add(struct blist *b, uint64_t s, uint64_t e, uint64_t end) {
  uint64_t cb = b->chunk * VIXDISKLIB_SECTOR_SIZE;
  s = s / cb * cb;
  e = (e + cb - 1) / cb * cb;
  if (e > end) e = end;
  if (e <= s || b->oom) return;
  uint64_t so = s / VIXDISKLIB_SECTOR_SIZE, eo = e / VIXDISKLIB_SECTOR_SIZE;
  VixDiskLibBlockList *l = b->l;
  uint32_t count = l->numBlocks;
  if (count && l->blocks[count - 1].offset + l->blocks[count - 1].length >= so) {
    if (eo > l->blocks[count - 1].offset + l->blocks[count - 1].length) l->blocks[count - 1].length = eo - l->blocks[count - 1].offset;
    return;
  }
  if (count == b->cap) {
    b->cap *= 2;
    VixDiskLibBlockList *nl = realloc(l, sizeof(VixDiskLibBlockList) + b->cap * sizeof(VixDiskLibBlock));
    if (!nl) { b->oom = 1; return; }
    b->l = l = nl;
  }
  l->blocks[count].offset = so;
  l->blocks[count].length = eo - so;
  l->numBlocks = count + 1;
}

struct bs_ctx { struct blist *b; uint64_t end; uint64_t reached; };

static int bs_extent(void *ud, const char *metacontext, uint64_t offset, uint32_t *entries, size_t nr, int *error) {
  (void)error;
  struct bs_ctx *x = ud;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
  for (size_t i = 0; i + 1 < nr; i += 2) {
    if (!(entries[i + 1] & LIBNBD_STATE_HOLE)) blist_add(x->b, offset, offset + entries[i], x->end);
    offset += entries[i];
  }
  x->reached = offset;
  return 0;
}

/* Allocated chunks of [start, start+n): SEEK_DATA/SEEK_HOLE of a file, NBD block status of an export. */
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle, VixDiskLibSectorType start, VixDiskLibSectorType n,
                                         VixDiskLibSectorType chunk, VixDiskLibBlockList **out) {
  struct disk *d = handle;
  if (!d || !out) return VIX_E_INVALID_ARG;
  if (g_no_query_blocks) return VIX_E_NOT_SUPPORTED;
  if (chunk < VIXDISKLIB_MIN_CHUNK_SIZE || (chunk & (chunk - 1)) != 0) return VIX_E_INVALID_ARG;
  if (start % chunk != 0 || n % chunk != 0 || n / chunk > VIXDISKLIB_MAX_CHUNK_NUMBER) return VIX_E_INVALID_ARG;
  if (start > d->sectors || n > d->sectors - start) return VIX_E_DISK_OUTOFRANGE;
  struct blist b = { .cap = 16, .chunk = chunk };
  b.l = calloc(1, sizeof(VixDiskLibBlockList) + b.cap * sizeof(VixDiskLibBlock));
  if (!b.l) return VIX_E_OUT_OF_MEMORY;
  uint64_t pos = start * VIXDISKLIB_SECTOR_SIZE, end = (start + n) * VIXDISKLIB_SECTOR_SIZE;
  if (d->nbd && !d->extents) {
    blist_add(&b, pos, end, end);             /* the export cannot tell: all data */
  } else if (d->nbd) {
    while (pos < end) {
      uint64_t want = end - pos > (1u << 30) ? (1u << 30) : end - pos;
      struct bs_ctx x = { &b, end, pos };
      nbd_extent_callback cb = { .callback = bs_extent, .user_data = &x };
      if (nbd_block_status(d->nbd, want, pos, cb, 0) < 0) {
        WARN("VixDiskLib: NBD block status failed: %s\n", nbd_get_error());
        free(b.l);
        return VIX_E_DISK_NOIO;
      }
      /* The server may answer less than asked: go on from where its answer ends. */
      pos = x.reached > pos ? x.reached : pos + want;
    }
  } else {
    while ((off_t)pos < (off_t)end) {
      off_t data = lseek(d->fd, (off_t)pos, SEEK_DATA);
      if (data < 0 || (uint64_t)data >= end) break;
      off_t hole = lseek(d->fd, data, SEEK_HOLE);
      if (hole < 0 || (uint64_t)hole > end) hole = (off_t)end;
      blist_add(&b, (uint64_t)data, (uint64_t)hole, end);
      uint64_t cb = chunk * VIXDISKLIB_SECTOR_SIZE;
      pos = ((uint64_t)hole + cb - 1) / cb * cb;
    }
  }
  if (b.oom) { free(b.l); return VIX_E_OUT_OF_MEMORY; }
  LOG("VixDiskLib: QueryAllocatedBlocks %llu+%llu chunk %llu: %u blocks\n",
      (unsigned long long)start, (unsigned long long)n, (unsigned long long)chunk, b.l->numBlocks);
  *out = b.l;
  return VIX_OK;
}

VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *l) {
  free(l);
  return VIX_OK;
}

char *VixDiskLib_GetErrorText(VixError err, const char *locale) {
  (void)locale;
  const char *t;
  switch (err & 0xFFFF) {
    case VIX_OK: t = "The operation was successful"; break;
    case VIX_E_FAIL: t = "Unknown error"; break;
    case VIX_E_OUT_OF_MEMORY: t = "Memory allocation failed: out of memory"; break;
    case VIX_E_INVALID_ARG: t = "One of the parameters was invalid"; break;
    case VIX_E_FILE_NOT_FOUND: t = "A file was not found"; break;
    case VIX_E_OBJECT_IS_BUSY: t = "This function cannot be performed because the handle is executing another function"; break;
    case VIX_E_NOT_SUPPORTED: t = "The operation is not supported"; break;
    case VIX_E_FILE_ERROR: t = "A file access error occurred on the host or guest operating system"; break;
    case VIX_E_FILE_ACCESS_ERROR: t = "You do not have access rights to this file"; break;
    case VIX_E_OBJECT_NOT_FOUND: t = "The object was not found"; break;
    case VIX_E_HOST_USER_PERMISSIONS: t = "Insufficient permissions in the host operating system"; break;
    case VIX_E_DISK_NOIO: t = "The disk is not accessible: I/O error"; break;
    case VIX_E_DISK_OUTOFRANGE: t = "One of the parameters supplied is out of range"; break;
    default: t = "Unknown error"; break;
  }
  return strdup(t);
}

void VixDiskLib_FreeErrorText(char *msg) { free(msg); }
