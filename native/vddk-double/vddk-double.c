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
 * - With no serverName the connection is local: paths are plain file names, transport "file".
 * - ReadAsync runs on a worker thread per handle and calls the completion callback there,
 *   as the real library does; Wait blocks until that handle's queue is empty.
 * - Every call logs through the registered log callback with a real va_list.
 */
#define _GNU_SOURCE
#include "vixDiskLib-abi.h"

#include <errno.h>
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
};

struct job {
  struct job *next;
  uint64_t start, n;
  uint8_t *buf;
  VixDiskLibCompletionCB cb;
  void *cbData;
};

struct disk {
  int fd;
  uint64_t sectors;
  struct conn *conn;
  pthread_t worker;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct job *head, *tail;
  int busy, stop, started;
};

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
  }
  fclose(f);
}

VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
                           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
                           const char *libDir, const char *configFile) {
  if (major < 6) return VIX_E_NOT_SUPPORTED;
  g_log = log; g_warn = warn; g_panic = panic;
  g_fail_sector = -1; g_busy_reads = 0; g_no_query_blocks = 0;
  g_datastores[0] = g_user[0] = g_password[0] = g_cookie[0] = g_thumb[0] = 0;
  snprintf(g_transports, sizeof g_transports, "nbdssl:nbd");
  if (configFile && *configFile) read_config(configFile);
  g_inited = 1;
  LOG("VixDiskLib: double initialized, API %u.%u, libDir %s\n", major, minor, libDir ? libDir : "(null)");
  return VIX_OK;
}

void VixDiskLib_Exit(void) {
  LOG("VixDiskLib: exit\n");
  g_inited = 0;
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
  if (g_thumb[0] && (!p->thumbPrint || strcasecmp(p->thumbPrint, g_thumb) != 0)) {
    WARN("VixDiskLib: SSL thumbprint mismatch for %s\n", p->serverName);
    free(c);
    return VIX_E_HOST_USER_PERMISSIONS;
  }
  int ok = 0;
  if (p->credType == VIXDISKLIB_CRED_UID) {
    ok = p->creds.uid.userName && p->creds.uid.password && !strcmp(p->creds.uid.userName, g_user) &&
         !strcmp(p->creds.uid.password, g_password) && g_user[0];
  } else if (p->credType == VIXDISKLIB_CRED_SESSIONID) {
    ok = p->creds.sessionId.cookie && g_cookie[0] && !strcmp(p->creds.sessionId.cookie, g_cookie);
  }
  if (!ok) { free(c); return VIX_E_HOST_USER_PERMISSIONS; }
  if (!pick_transport(transportModes, c->transport, sizeof c->transport)) {
    WARN("VixDiskLib: none of the transports %s is available\n", transportModes ? transportModes : "");
    free(c);
    return VIX_E_NOT_SUPPORTED;
  }
  *connection = c;
  return VIX_OK;
}

VixError VixDiskLib_Disconnect(VixDiskLibConnection connection) {
  if (!connection) return VIX_E_INVALID_ARG;
  free(connection);
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

static void *worker_main(void *arg) {
  struct disk *d = arg;
  pthread_mutex_lock(&d->mu);
  for (;;) {
    while (!d->head && !d->stop) pthread_cond_wait(&d->cv, &d->mu);
    if (!d->head && d->stop) break;
    struct job *j = d->head;
    d->head = j->next;
    if (!d->head) d->tail = NULL;
    pthread_mutex_unlock(&d->mu);
    VixError e = VixDiskLib_Read(d, j->start, j->n, j->buf);
    j->cb(j->cbData, e);
    free(j);
    pthread_mutex_lock(&d->mu);
    d->busy--;
    pthread_cond_broadcast(&d->cv);
  }
  pthread_mutex_unlock(&d->mu);
  return NULL;
}

VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags, VixDiskLibHandle *handle) {
  const struct conn *c = connection;
  if (!c || !path || !handle) return VIX_E_INVALID_ARG;
  char file[4096];
  if (!resolve(c, path, file, sizeof file)) return VIX_E_INVALID_ARG;
  int fd = open(file, (flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY) ? O_RDONLY : O_RDWR);
  if (fd < 0) {
    WARN("VixDiskLib: cannot open %s: %s\n", path, strerror(errno));
    return errno == ENOENT ? VIX_E_FILE_NOT_FOUND : VIX_E_FILE_ERROR;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) { close(fd); return VIX_E_FILE_ERROR; }
  struct disk *d = calloc(1, sizeof *d);
  if (!d) { close(fd); return VIX_E_OUT_OF_MEMORY; }
  d->fd = fd;
  d->sectors = (uint64_t)st.st_size / VIXDISKLIB_SECTOR_SIZE;
  d->conn = (struct conn *)c;
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cv, NULL);
  LOG("VixDiskLib: opened %s (%llu sectors) flags %u transport %s\n", path, (unsigned long long)d->sectors, flags, c->transport);
  *handle = d;
  return VIX_OK;
}

VixError VixDiskLib_Close(VixDiskLibHandle handle) {
  struct disk *d = handle;
  if (!d) return VIX_E_INVALID_ARG;
  if (d->started) {
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->worker, NULL);
  }
  close(d->fd);
  free(d);
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
  if (start > d->sectors || n > d->sectors - start) return VIX_E_DISK_OUTOFRANGE;
  if (g_fail_sector >= 0 && (uint64_t)g_fail_sector >= start && (uint64_t)g_fail_sector < start + n) {
    WARN("VixDiskLib: injected I/O error at sector %lld\n", g_fail_sector);
    return VIX_E_DISK_NOIO;
  }
  pthread_mutex_lock(&g_mu);
  int busy = g_busy_reads > 0 ? g_busy_reads-- : 0;
  pthread_mutex_unlock(&g_mu);
  if (busy) return VIX_E_OBJECT_IS_BUSY;
  size_t len = (size_t)n * VIXDISKLIB_SECTOR_SIZE;
  off_t off = (off_t)start * VIXDISKLIB_SECTOR_SIZE;
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
  j->start = start; j->n = n; j->buf = buf; j->cb = cb; j->cbData = cbData;
  pthread_mutex_lock(&d->mu);
  if (!d->started) {
    if (pthread_create(&d->worker, NULL, worker_main, d) != 0) { pthread_mutex_unlock(&d->mu); free(j); return VIX_E_FAIL; }
    d->started = 1;
  }
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

/* Allocated chunks of [start, start+n) from SEEK_DATA/SEEK_HOLE, widened to chunk boundaries. */
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle, VixDiskLibSectorType start, VixDiskLibSectorType n,
                                         VixDiskLibSectorType chunk, VixDiskLibBlockList **out) {
  struct disk *d = handle;
  if (!d || !out) return VIX_E_INVALID_ARG;
  if (g_no_query_blocks) return VIX_E_NOT_SUPPORTED;
  if (chunk < VIXDISKLIB_MIN_CHUNK_SIZE || (chunk & (chunk - 1)) != 0) return VIX_E_INVALID_ARG;
  if (start % chunk != 0 || n % chunk != 0 || n / chunk > VIXDISKLIB_MAX_CHUNK_NUMBER) return VIX_E_INVALID_ARG;
  if (start > d->sectors || n > d->sectors - start) return VIX_E_DISK_OUTOFRANGE;
  size_t cap = 16, count = 0;
  VixDiskLibBlockList *l = malloc(sizeof(VixDiskLibBlockList) + cap * sizeof(VixDiskLibBlock));
  if (!l) return VIX_E_OUT_OF_MEMORY;
  off_t pos = (off_t)start * VIXDISKLIB_SECTOR_SIZE, end = (off_t)(start + n) * VIXDISKLIB_SECTOR_SIZE;
  off_t cb = (off_t)chunk * VIXDISKLIB_SECTOR_SIZE;
  while (pos < end) {
    off_t data = lseek(d->fd, pos, SEEK_DATA);
    if (data < 0 || data >= end) break;
    off_t hole = lseek(d->fd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    off_t s = data / cb * cb, e = (hole + cb - 1) / cb * cb;
    if (e > end) e = end;
    uint64_t so = (uint64_t)s / VIXDISKLIB_SECTOR_SIZE, eo = (uint64_t)e / VIXDISKLIB_SECTOR_SIZE;
    if (count && l->blocks[count - 1].offset + l->blocks[count - 1].length >= so) {
      l->blocks[count - 1].length = eo - l->blocks[count - 1].offset;
    } else {
      if (count == cap) {
        cap *= 2;
        VixDiskLibBlockList *nl = realloc(l, sizeof(VixDiskLibBlockList) + cap * sizeof(VixDiskLibBlock));
        if (!nl) { free(l); return VIX_E_OUT_OF_MEMORY; }
        l = nl;
      }
      l->blocks[count].offset = so;
      l->blocks[count].length = eo - so;
      count++;
    }
    pos = e;
  }
  l->numBlocks = (uint32_t)count;
  LOG("VixDiskLib: QueryAllocatedBlocks %llu+%llu chunk %llu: %u blocks\n",
      (unsigned long long)start, (unsigned long long)n, (unsigned long long)chunk, l->numBlocks);
  *out = l;
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
    case VIX_E_HOST_USER_PERMISSIONS: t = "Insufficient permissions in the host operating system"; break;
    case VIX_E_DISK_NOIO: t = "The disk is not accessible: I/O error"; break;
    case VIX_E_DISK_OUTOFRANGE: t = "One of the parameters supplied is out of range"; break;
    default: t = "Unknown error"; break;
  }
  return strdup(t);
}

void VixDiskLib_FreeErrorText(char *msg) { free(msg); }
