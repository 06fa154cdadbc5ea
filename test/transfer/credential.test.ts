import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { obtainCredential, readCredential } from '../../src/transfer/credential.ts';
import { ControlClient } from '../../src/transfer/control-client.ts';
import { UserError } from '../../src/util/errors.ts';
import { silentLogger } from '../../src/util/log.ts';
import { startTestReceiver } from './helpers.ts';

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

test('connects racing for one credential file register once and all get the credential; a lost race to another process reads the winner\'s file', async (t) => {
  const rx = await startTestReceiver();
  t.after(() => rx.close());
  const o = { credentialFile: join(rx.dir, 'race.cred'), sourceId: 'race', activationCode: rx.code };
  const got = await Promise.all(Array.from({ length: 4 }, () => obtainCredential(rx.control(), o, silentLogger)));
  for (const c of got) assert.deepEqual(c, got[0]);
  assert.deepEqual(await readCredential(o.credentialFile), got[0]);
  const whoami = await new ControlClient({ host: '127.0.0.1', port: rx.rx.controlPort, fingerprint: rx.rx.fingerprint },
    { sourceId: 'race', credential: got[0]!.credential }).whoami();
  assert.equal(whoami.sourceId, 'race');

  // another process registered "race2" and writes its file a moment after this one is refused
  const o2 = { credentialFile: join(rx.dir, 'race2.cred'), sourceId: 'race2', activationCode: rx.code };
  const theirs = await obtainCredential(rx.control(), { ...o2, credentialFile: join(rx.dir, 'elsewhere.cred') }, silentLogger);
  setTimeout(() => { void writeFile(o2.credentialFile, `${JSON.stringify(theirs)}\n`); }, 200);
  assert.deepEqual(await obtainCredential(rx.control(), o2, silentLogger), theirs);
  // nobody writes the file: the refusal stands, with its fix
  await assert.rejects(obtainCredential(rx.control(), { ...o2, credentialFile: join(rx.dir, 'never.cred') }, silentLogger),
    (e: unknown) => code('ALREADY_REGISTERED')(e) && typeof (e as UserError).fix === 'string');
});
