/**
 * VmInfo.folder from the parents one inventory pass reads: folders below the datacenter's vm folder,
 * a vApp member (parent unset, parentVApp set), a vApp nested in another, and what is unknown.
 * Objects written here in the shapes lean XML gives (refs as { attributes: { type }, $value }).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FolderTree, inFolder, normalizeFolder } from '../../src/vsphere/vm-folder.ts';

const ref = (type: string, value: string) => ({ attributes: { type }, $value: value });
const obj = (type: string, value: string, props: Record<string, unknown>) => ({ obj: { type, value }, props, missing: [] });

function tree(): FolderTree {
  const t = new FolderTree();
  for (const o of [
    obj('Folder', 'group-v3', { name: 'vm', parent: ref('Datacenter', 'datacenter-2') }),
    obj('Folder', 'group-v10', { name: 'Prod', parent: ref('Folder', 'group-v3') }),
    obj('Folder', 'group-v11', { name: 'Web', parent: ref('Folder', 'group-v10') }),
    obj('Folder', 'group-v12', { name: 'a%2fb', parent: ref('Folder', 'group-v3') }),
    obj('Folder', 'group-h4', { name: 'host', parent: ref('Datacenter', 'datacenter-2') }),
    obj('VirtualApp', 'resgroup-v20', { name: 'shop', parentFolder: ref('Folder', 'group-v10') }),
    obj('VirtualApp', 'resgroup-v21', { name: 'tier', parentVApp: ref('VirtualApp', 'resgroup-v20') }),
  ]) t.add(obj(o.obj.type, o.obj.value, o.props));
  return t;
}

test('a VM in nested folders, in the vm folder itself, in a vApp and in a nested vApp', () => {
  const t = tree();
  assert.deepEqual(t.place({ parent: ref('Folder', 'group-v11') }), { folder: 'Prod/Web', vApp: null, datacenterRef: 'datacenter-2' });
  assert.deepEqual(t.place({ parent: ref('Folder', 'group-v3') }), { folder: '', vApp: null, datacenterRef: 'datacenter-2' });
  assert.deepEqual(t.place({ parentVApp: ref('VirtualApp', 'resgroup-v20') }), { folder: 'Prod', vApp: 'shop', datacenterRef: 'datacenter-2' });
  assert.deepEqual(t.place({ parentVApp: ref('VirtualApp', 'resgroup-v21') }), { folder: 'Prod', vApp: 'shop/tier', datacenterRef: 'datacenter-2' });
  assert.equal(t.place({ parent: ref('Folder', 'group-v12') }).folder, 'a%2fb', "vCenter's escapes stay: '/' only separates");
});

test('unknown placements are null, not the vm folder', () => {
  const t = tree();
  assert.deepEqual(t.place({}), { folder: null, vApp: null, datacenterRef: null }, 'parent unreadable (missingSet)');
  assert.equal(t.place({ parent: ref('Folder', 'group-v99') }).folder, null, 'a folder outside the view');
  assert.deepEqual(t.place({ parentVApp: ref('VirtualApp', 'resgroup-v99') }), { folder: null, vApp: null, datacenterRef: null });
  const orphan = new FolderTree();
  orphan.add(obj('VirtualApp', 'resgroup-v1', { name: 'lone' }));
  assert.deepEqual(orphan.place({ parentVApp: ref('VirtualApp', 'resgroup-v1') }), { folder: null, vApp: 'lone', datacenterRef: null });
  // A loop (a broken answer) ends instead of spinning.
  const loop = new FolderTree();
  loop.add(obj('Folder', 'f1', { name: 'x', parent: ref('Folder', 'f2') }));
  loop.add(obj('Folder', 'f2', { name: 'y', parent: ref('Folder', 'f1') }));
  assert.equal(loop.place({ parent: ref('Folder', 'f1') }).folder, null);
});

test('folder filter: a folder holds its subfolders, not its namesakes; slashes do not matter', () => {
  assert.equal(normalizeFolder('/Prod//Web/'), 'Prod/Web');
  assert.ok(inFolder('Prod/Web', 'Prod'));
  assert.ok(inFolder('Prod', '/Prod/'));
  assert.ok(!inFolder('Production', 'Prod'));
  assert.ok(!inFolder('Prod', 'Prod/Web'));
  assert.ok(inFolder('', '/'), '"/" is the whole datacenter');
  assert.ok(!inFolder(null, 'Prod'));
});
