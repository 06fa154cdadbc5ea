export { NbdSource, type NbdSourceOptions } from './source.ts';
export { NbdConnection, type NbdTlsSettings, type NbdExportInfo } from './connection.ts';
export { NbdError } from './errors.ts';
export { parseNbdUri, isNbdUri, type NbdTarget } from './uri.ts';
