export {
  VddkSource, vddkMaxReadSize, VDDK_MAX_READ_ESXI, VDDK_MAX_READ_LOCAL, VDDK_MAX_READ_VCENTER,
  type AllocatedRange, type VddkServerKind, type VddkSourceOptions, type VddkCredentials,
} from './source.ts';
export { initVddk, shutdownVddk, vddkOpenCounts, type VddkInitOptions } from './library.ts';
export { VddkError, VddkNfcResourceError, isVddkNfcResourceError } from './errors.ts';
export { VddkUnavailableError, loadVixDiskLib, libraryCandidates } from './abi.ts';
export { parseVddkUri, isVddkUri } from './uri.ts';
