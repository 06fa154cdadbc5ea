export { NbdSource, type NbdSourceOptions } from './source.ts';
export { openNbdConnection, type NbdConnectSettings } from './connection.ts';
export { NbdConnection } from './transmission.ts';
export type { NbdTlsSettings, NbdExportInfo } from './handshake.ts';
export { NbdError } from './errors.ts';
export { parseNbdUri, isNbdUri, type NbdTarget } from './uri.ts';
