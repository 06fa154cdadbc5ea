import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SendWindow, type WindowEntry } from '../../src/transfer/send-window.ts';

type E = WindowEntry & { tag: string };
const piece = (tag: string, offset: number, cost = 100, overwrite = false) => ({ tag, disk: 0, offset, length: cost, overwrite, cost });

function filled(limit = 1000) {
  const w = new SendWindow<E>(limit);
  const es = ['a', 'b', 'c', 'd'].map((t, i) => w.push(piece(t, i * 100)));
  return { w, es };
}

test('entries get sequence numbers from 1 and count against the limit; an empty window takes anything', () => {
  const w = new SendWindow<E>(250);
  assert.ok(w.empty && w.allWritten && !w.awaitingAck);
  assert.ok(w.fits(10_000), 'an empty window takes an entry larger than its limit');
  const a = w.push(piece('a', 0));
  const b = w.push(piece('b', 100));
  assert.deepEqual([a.seq, b.seq, a.sent], [1, 2, false]);
  assert.equal(w.cost, 200);
  assert.ok(w.fits(50) && !w.fits(51));
  w.reprice(a, 10);
  assert.equal(w.cost, 110, 'a packed size replaces the estimate');
  assert.ok(w.fits(140));
});

test('the cursor walks the entries in order; only the next one may be written', () => {
  const { w, es } = filled();
  assert.equal(w.next(), es[0]);
  assert.equal(w.written(es[0]!), true, 'first transmission');
  assert.ok(w.awaitingAck && !w.allWritten);
  assert.ok(w.isNext(es[1]!) && !w.isNext(es[0]!));
  assert.throws(() => w.written(es[2]!), /not the next one/);
  w.written(es[1]!); w.written(es[2]!); w.written(es[3]!);
  assert.ok(w.allWritten);
  assert.equal(w.next(), undefined);
});

test('an ACK releases everything up to its sequence number, written or not, and keeps the cursor on the same entry', () => {
  const { w, es } = filled();
  w.written(es[0]!); w.written(es[1]!); w.written(es[2]!);
  w.ack(2);
  assert.deepEqual([w.size, w.cost], [2, 200]);
  assert.equal(w.next(), es[3], 'still the first unwritten entry');
  w.ack(2);
  assert.equal(w.size, 2, 'an old ACK again releases nothing');
  w.ack(4);
  assert.ok(w.empty && w.allWritten && !w.awaitingAck);
  assert.equal(w.cost, 0);
});

test('an ACK past the cursor (the receiver had more than this connection wrote) leaves the cursor at the oldest', () => {
  const { w, es } = filled();
  w.written(es[0]!);
  w.ack(3);
  assert.equal(w.next(), es[3]);
  assert.ok(!w.awaitingAck);
});

test('after a reconnect to a receiver that knows the stream: drop what is durable, write the rest again', () => {
  const { w, es } = filled();
  for (const e of es) w.written(e);
  w.resume(2, () => true);
  assert.deepEqual([w.size, w.next()?.tag], [2, 'c']);
  assert.equal(w.written(w.next()!), false, 'a second transmission');
});

test('after a reconnect to a receiver that lost the stream: drop what its store holds, never an overwrite', () => {
  const w = new SendWindow<E>(1000);
  const es = [w.push(piece('a', 0)), w.push(piece('b', 100, 100, true)), w.push(piece('c', 200)), w.push(piece('d', 300))];
  w.written(es[0]!); w.written(es[1]!);
  const held = new Set(['a', 'b', 'd']);
  w.resume(null, (e) => held.has(e.tag));
  assert.deepEqual([...Array(w.size)].map(() => { const e = w.next()!; w.written(e); return e.tag; }), ['b', 'c'],
    'b overwrote earlier data: a held range does not prove this version arrived');
  assert.equal(w.cost, 200);
  assert.deepEqual(es.map((e) => e.seq), [1, 2, 3, 4], 'sequence numbers stay');
  assert.equal(w.push(piece('e', 400)).seq, 5);
});
