import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { obtainCredential, readCredential } from '../../src/transfer/credential.ts';
import { ControlClient } from '../../src/transfer/control-client.ts';
import { UserError } from '../../src/util/errors.ts';
import { silentLogger } from '../../src/util/log.ts';

let dir: string;
before(async () => { dir = await mkdtemp(join(tmpdir(), 'vmlift-cred-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

const code = (c: string) => (e: unknown) => e instanceof UserError && e.code === c;
/** Never reached: these cases are settled by the file alone. */
const unreachable = new ControlClient({ host: '127.0.0.1', port: 1, fingerprint: '00'.repeat(32) });

test('a credential file is read; a missing one is null; a damaged one is refused', async () => {
  await writeFile(join(dir, 'ok.cred'), '{"sourceId":"s1","credential":"secret"}\n');
  assert.deepEqual(await readCredential(join(dir, 'ok.cred')), { sourceId: 's1', credential: 'secret' });
  assert.equal(await readCredential(join(dir, 'absent.cred')), null);
  for (const [name, text] of [['bad.cred', 'not json'], ['half.cred', '{"sourceId":"s1"}']]) {
    await writeFile(join(dir, name!), text!);
    await assert.rejects(readCredential(join(dir, name!)), (e: unknown) => code('CREDENTIAL_FILE')(e) && /is damaged/.test((e as Error).message));
  }
  await assert.rejects(readCredential(dir), code('CREDENTIAL_FILE'), 'a directory cannot be read');
});

test('the file decides: its own source, another source, or no file and no code', async () => {
  assert.deepEqual(await obtainCredential(unreachable, { credentialFile: join(dir, 'ok.cred'), sourceId: 's1' }, silentLogger),
    { sourceId: 's1', credential: 'secret' });
  await assert.rejects(obtainCredential(unreachable, { credentialFile: join(dir, 'ok.cred'), sourceId: 's2', activationCode: 'VML-X' }, silentLogger),
    (e: unknown) => code('CREDENTIAL_MISMATCH')(e) && /belongs to source "s1", not "s2"/.test((e as Error).message));
  await assert.rejects(obtainCredential(unreachable, { credentialFile: join(dir, 'none.cred'), sourceId: 's3' }, silentLogger), code('NO_CREDENTIAL'));
});
