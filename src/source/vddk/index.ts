export { VddkSource, VddkError, shutdownVddk, type VddkSourceOptions, type VddkCredentials } from './source.ts';
export { VddkUnavailableError, loadVixDiskLib, libraryCandidates } from './abi.ts';
export { parseVddkUri, isVddkUri } from './uri.ts';
