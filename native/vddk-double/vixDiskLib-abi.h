/*
 * The libvixDiskLib ABI (VDDK 6.7, 7.x, 8.x) as vmlift uses it: types, struct layouts and
 * entry points, written from the public VDDK programming guide and API reference.
 * Field order and types follow VMware's vixDiskLib.h; each is cited by its header name.
 * Both the C test double (vddk-double.c) and the koffi binding (src/source/vddk/abi.ts)
 * must agree with this file; test/source/vddk.test.ts checks the layout through the double.
 */
#ifndef VMLIFT_VIXDISKLIB_ABI_H
#define VMLIFT_VIXDISKLIB_ABI_H

#include <stdarg.h>
#include <stdint.h>

typedef uint64_t VixError;              /* VixError: 64-bit, low 16 bits = code */
typedef uint64_t VixDiskLibSectorType;  /* VixDiskLibSectorType */
typedef void *VixDiskLibConnection;     /* opaque */
typedef void *VixDiskLibHandle;         /* opaque */

/* Error codes used by vmlift (values from vix.h's VIX_ERROR list). */
#define VIX_OK                        0
#define VIX_E_FAIL                    1
#define VIX_E_OUT_OF_MEMORY           2
#define VIX_E_INVALID_ARG             3
#define VIX_E_FILE_NOT_FOUND          4
#define VIX_E_OBJECT_IS_BUSY          5
#define VIX_E_NOT_SUPPORTED           6
#define VIX_E_FILE_ERROR              7
#define VIX_E_FILE_ACCESS_ERROR       13
#define VIX_E_OBJECT_NOT_FOUND        25
#define VIX_E_HOST_USER_PERMISSIONS   3014
#define VIX_E_DISK_NOIO               16002
#define VIX_E_DISK_OUTOFRANGE         16007
#define VIX_ASYNC                     25000

#define VIXDISKLIB_SECTOR_SIZE        512
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_MIN_CHUNK_SIZE     128         /* sectors, QueryAllocatedBlocks */
#define VIXDISKLIB_MAX_CHUNK_NUMBER   (512 * 1024)

/* VixDiskLibGenericLogFunc: printf-style format plus a va_list. */
typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);
/* VixDiskLibCompletionCB: async completion, called with the caller's cbData and the result. */
typedef void (*VixDiskLibCompletionCB)(void *cbData, VixError result);

typedef enum {                          /* VixDiskLibCredType */
  VIXDISKLIB_CRED_UID = 1,              /* user name + password */
  VIXDISKLIB_CRED_SESSIONID = 2,        /* vSphere session cookie */
  VIXDISKLIB_CRED_TICKETID = 3,
  VIXDISKLIB_CRED_SSPI = 4,
  VIXDISKLIB_CRED_UNKNOWN = 256
} VixDiskLibCredType;

typedef enum {                          /* VixDiskLibSpecType */
  VIXDISKLIB_SPEC_VMX = 0,
  VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
  VIXDISKLIB_SPEC_UNKNOWN = 2
} VixDiskLibSpecType;

typedef struct {                        /* VixDiskLibUidPasswdCreds */
  char *userName;
  char *password;
} VixDiskLibUidPasswdCreds;

typedef struct {                        /* VixDiskLibSessionIdCreds */
  char *cookie;
  char *userName;
  char *key;
} VixDiskLibSessionIdCreds;

typedef struct {                        /* VixDiskLibVStorageObjectSpec */
  char *id;
  char *datastoreMoRef;
  char *ssId;
} VixDiskLibVStorageObjectSpec;

typedef struct {                        /* VixDiskLibConnectParams (VDDK >= 6.7) */
  char *vmxSpec;                        /* "moref=vm-N" */
  char *serverName;                     /* vCenter or ESXi host name */
  char *thumbPrint;                     /* SHA-1 (or SHA-256) of the server certificate */
  long privateUse;                      /* reserved */
  VixDiskLibCredType credType;
  union {                               /* creds */
    VixDiskLibUidPasswdCreds uid;
    VixDiskLibSessionIdCreds sessionId;
    void *ticketId;                     /* reserved */
  } creds;
  uint32_t port;                        /* 0: default 443 */
  uint32_t nfcHostPort;                 /* 0: default 902 */
  char *reserved3;                      /* vimApiVer in some releases; unused */
  char reserved4[8];
  void *reserved5;
  union {                               /* spec */
    VixDiskLibVStorageObjectSpec vStorageObjSpec;
  } spec;
  VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct {                        /* VixDiskLibGeometry */
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
} VixDiskLibGeometry;

typedef enum {                          /* VixDiskLibAdapterType */
  VIXDISKLIB_ADAPTER_IDE = 1,
  VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
  VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
  VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

typedef struct {                        /* VixDiskLibInfo (leading fields; the library allocates it) */
  VixDiskLibGeometry biosGeo;
  VixDiskLibGeometry physGeo;
  VixDiskLibSectorType capacity;        /* in sectors */
  VixDiskLibAdapterType adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
} VixDiskLibInfo;

typedef struct {                        /* VixDiskLibBlock: in sectors */
  VixDiskLibSectorType offset;
  VixDiskLibSectorType length;
} VixDiskLibBlock;

typedef struct {                        /* VixDiskLibBlockList */
  uint32_t numBlocks;
  VixDiskLibBlock blocks[1];            /* numBlocks entries */
} VixDiskLibBlockList;

VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion, VixDiskLibGenericLogFunc *log,
                           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
                           const char *libDir, const char *configFile);
void VixDiskLib_Exit(void);
VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *params);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *params, char readOnly, const char *snapshotRef,
                              const char *transportModes, VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags, VixDiskLibHandle *handle);
VixError VixDiskLib_Close(VixDiskLibHandle handle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle);
VixError VixDiskLib_Read(VixDiskLibHandle handle, VixDiskLibSectorType startSector, VixDiskLibSectorType numSectors, uint8_t *readBuffer);
VixError VixDiskLib_ReadAsync(VixDiskLibHandle handle, VixDiskLibSectorType startSector, VixDiskLibSectorType numSectors,
                              uint8_t *readBuffer, VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_Wait(VixDiskLibHandle handle);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle, VixDiskLibSectorType startSector, VixDiskLibSectorType numSectors,
                                         VixDiskLibSectorType chunkSize, VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);

#endif
