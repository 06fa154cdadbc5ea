import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { Progress } from '../../src/cli/progress.ts';

function sink(isTTY: boolean): Writable & { text: string; isTTY: boolean; columns: number } {
  const w = new Writable({ write(chunk, _enc, cb) { (w as unknown as { text: string }).text += String(chunk); cb(); } }) as Writable & { text: string; isTTY: boolean; columns: number };
  w.text = ''; w.isTTY = isTTY; w.columns = 200;
  return w;
}

test('JSON lines: done, total, speed and remaining = (total - done) / speed', () => {
  let now = 0;
  const out = sink(false);
  const p = new Progress({ json: true, jsonStream: out, intervalMs: 1000, now: () => now });
  p.update('d0', { label: 'disk 0', done: 0, total: 1000e6 });
  now = 1000; p.update('d0', { label: 'disk 0', done: 100e6, total: 1000e6, extra: { sent: 5 } });
  now = 2000; p.update('d0', { label: 'disk 0', done: 200e6, total: 1000e6 });
  now = 2100; p.update('d0', { label: 'disk 0', done: 210e6, total: 1000e6 }); // throttled
  now = 3000; p.update('d0', { label: 'disk 0', done: 1000e6, total: 1000e6 });
  const lines = out.text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, number | string>);
  assert.equal(lines.length, 4);
  assert.equal(lines[1]!.type, 'progress');
  assert.equal(lines[1]!.sent, 5);
  assert.equal(lines[2]!.speedBytesPerSec, 100e6);
  assert.equal(lines[2]!.remainingSec, 8); // 800 MB left at 100 MB/s
  assert.equal(lines[3]!.done, 1000e6);
  assert.equal(lines[3]!.remainingSec, 0);
});

test('terminal: one bar per disk redrawn in place', () => {
  let now = 0;
  const tty = sink(true);
  const p = new Progress({ stream: tty as unknown as NodeJS.WriteStream, intervalMs: 100, now: () => now });
  p.update('d0', { label: 'disk 0', done: 0, total: 4096 });
  p.update('d1', { label: 'disk 1', done: 0, total: 4096 });
  now = 500; p.update('d0', { label: 'disk 0', done: 2048, total: 4096 });
  p.finish();
  assert.match(tty.text, /\x1b\[2Kdisk 0 +\[#{12}\.{12}\] +50\.0%/);
  assert.match(tty.text, /\x1b\[2A/, 'cursor moved up over the two rows to redraw them');
  assert.match(tty.text, /eta /);
});
