export { HttpDatastoreSource, type HttpDatastoreOptions, type HttpTrust } from './source.ts';
export { parseDescriptor, checkDescriptor, type VmdkDescriptor } from './descriptor.ts';
