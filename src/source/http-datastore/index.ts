export { HttpDatastoreSource, type HttpDatastoreOptions, type HttpTrust } from './source.ts';
export { parseDescriptor, checkDescriptor, type VmdkDescriptor } from './descriptor.ts';
export { httpRefusal, assertHttpReadable, HTTP_REFUSAL_FIX, type DiskBackingFacts } from './eligibility.ts';
