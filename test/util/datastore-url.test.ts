import { test } from 'node:test';
import assert from 'node:assert/strict';
import { datastoreUrl, flatExtentPath, flatExtentUrl, parseDatastorePath } from '../../src/util/datastore-url.ts';
import { UserError } from '../../src/util/errors.ts';

test('a descriptor names its flat extent; a flat extent stays; a delta gets the -flat name the reader refuses by its descriptor', () => {
  assert.equal(flatExtentPath('vm/vm.vmdk'), 'vm/vm-flat.vmdk');
  assert.equal(flatExtentPath('vm/VM.VMDK'), 'vm/VM-flat.vmdk');
  assert.equal(flatExtentPath('vm/vm-flat.vmdk'), 'vm/vm-flat.vmdk', 'never vm-flat-flat.vmdk');
  assert.equal(flatExtentPath('vm/vm-FLAT.vmdk'), 'vm/vm-FLAT.vmdk');
  assert.equal(flatExtentPath('vm/vm-000001.vmdk'), 'vm/vm-000001-flat.vmdk');
  assert.equal(flatExtentPath('vm/flat.vmdk'), 'vm/flat-flat.vmdk', 'only a "-flat" suffix marks a flat extent');
});

test('datastore paths parse, and anything else is refused', () => {
  assert.deepEqual(parseDatastorePath(' [ds 1]  vm a/vm a.vmdk '), { datastore: 'ds 1', path: 'vm a/vm a.vmdk' });
  for (const bad of ['vm/vm.vmdk', '[ds1]', '[] vm.vmdk']) {
    assert.throws(() => parseDatastorePath(bad), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_PATH');
  }
});

test('/folder URLs keep the server origin and encode every path segment and the query', () => {
  assert.equal(datastoreUrl('https://vc.example.com/sdk', 'DC 1', { datastore: 'ds&1', path: 'vm a/x#1.vmdk' }),
    'https://vc.example.com/folder/vm%20a/x%231.vmdk?dcPath=DC%201&dsName=ds%261');
  assert.equal(flatExtentUrl('https://vc.example.com:8443/sdk', 'dc/sub', '[ds1] vm/vm.vmdk'),
    'https://vc.example.com:8443/folder/vm/vm-flat.vmdk?dcPath=dc%2Fsub&dsName=ds1');
  assert.equal(flatExtentUrl('https://vc:443', 'dc', '[ds1] vm/vm-flat.vmdk'), 'https://vc/folder/vm/vm-flat.vmdk?dcPath=dc&dsName=ds1');
  assert.equal(flatExtentUrl('https://[fe80::1]:8443', 'dc', '[ds1] vm/vm.vmdk'), 'https://[fe80::1]:8443/folder/vm/vm-flat.vmdk?dcPath=dc&dsName=ds1');
});
