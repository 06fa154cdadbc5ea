export { openImageStore, DEFAULT_CHUNK_SIZE, MAX_READ, type StoreOptions } from './store.ts';
export { StoreError } from './types.ts';
export { migrateStore, type MigrateResult } from './migrate.ts';
export type * from './types.ts';
