/**
 * vmlift's vSphere control plane. Layers, lowest first:
 *   session (SOAP over node-soap + undici, TLS pinning, cookie, re-login, the API version from api-version) → methods (typed vim25 calls)
 *   → types / inventory / tasks / changes / preflight → VCenter (object helpers; datastore URLs from util/datastore-url.ts).
 */
export { VimSession, sdkUrl, type ConnectOptions, type ServiceContent } from './session.ts';
export { unescapeName } from './convert.ts';
export { makeDispatcher, normalizeThumbprint, formatThumbprint, fetchThumbprints, type TrustMode } from './tls.ts';
export type { TransportStats } from './http.ts';
export { MIN_API_VERSION, MAX_API_VERSION, chooseApiVersion, parseServiceVersions } from './api-version.ts';
export { VimFault, parseFault, isFault, faultToUserError } from './errors.ts';
export * as methods from './methods.ts';
export { waitForTask, type TaskWaitOptions, type TaskResult } from './tasks.ts';
export { fetchInventory, fetchVm, fetchVmByRef, fetchSnapshotDisks, parseDisks, parseExtraConfig, type Inventory } from './inventory.ts';
export { preflight, type PreflightCheck, type PreflightReport } from './preflight.ts';
export { unreadableError, describeMissing } from './missing.ts';
export { systemVmKind } from './system-vms.ts';
export { changedAreas, parseChangeId, type ChangeId, type Area, type ChangedAreas } from './changes.ts';
export { VCenter, type CbtResult } from './vcenter.ts';
export type { DiskInfo, VmInfo, HostInfo, SnapshotNode, SnapshotHandle, ControllerType, MoRef } from './types.ts';
export { resolveConnection, type ConnectionFlags } from './connection.ts';
