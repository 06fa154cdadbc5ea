/**
 * Reads of an existing socket into one reused buffer (what `net.Socket`'s `onread` option does,
 * which Node offers only for sockets it creates itself, not for a TLS server's sockets).
 *
 * Why: a socket in the usual mode hands every read to JavaScript in a new ArrayBuffer (16 KiB per
 * TLS record: 65,536 per GiB). On the receiver those buffers kept V8 running major GCs, a large
 * share of its CPU (docs/transfer.md, "Receiving frames"); reading into one buffer and copying
 * straight into the frame being assembled allocates nothing per read.
 *
 * The mechanism is Node's own (`onread`: the handle's `useUserBuffer` and the socket's callback
 * slots); the slots are found on a socket made with `onread`, by value. Where a Node version lays
 * them out differently, `readIntoBuffer` returns false and the caller keeps 'data' events.
 */
import net from 'node:net';

interface Slots { buffer: symbol; callback: symbol; generator: symbol | null }
let slots: Slots | null | undefined;

/** The symbol of the slot of a socket made with `onread` that holds `value`. */
function slotHolding(onread: object, value: unknown): symbol | undefined {
  const probe = new net.Socket({ onread } as net.SocketConstructorOpts);
  const own = probe as unknown as Record<symbol, unknown>;
  const found = Object.getOwnPropertySymbols(probe).find((sym) => own[sym] === value);
  probe.destroy();
  return found;
}

function findSlots(): Slots | null {
  if (slots !== undefined) return slots;
  slots = null;
  try {
    const buffer = Buffer.alloc(1);
    const callback = (): void => {};
    const generator = (): Buffer => buffer;
    const b = slotHolding({ buffer, callback }, buffer);
    const c = slotHolding({ buffer, callback }, callback);
    // where a buffer generator is set, each read asks it for the next buffer: ours is cleared
    const g = slotHolding({ buffer: generator, callback }, generator) ?? null;
    if (b && c) slots = { buffer: b, callback: c, generator: g };
  } catch { /* no onread support: slots stays null */ }
  return slots;
}

/** Whether this Node lets `readIntoBuffer` work (false: callers get 'data' events as usual). */
export function canReadIntoBuffer(): boolean {
  return process.env.VMLIFT_SOCKET_DATA_EVENTS !== '1' && findSlots() !== null;
}

/**
 * From now on, deliver what `s` reads as `onBytes(view)`, where `view` is a window of one reused
 * buffer of `size` bytes, valid only during the call (copy what you keep). Bytes the socket had
 * already buffered are delivered first. pause()/resume(), 'end', 'close' and 'error' work as before.
 * Returns false (and changes nothing) where this Node does not allow it.
 */
export function readIntoBuffer(s: net.Socket, size: number, onBytes: (view: Buffer) => void): boolean {
  const k = canReadIntoBuffer() ? findSlots() : null;
  const handle = (s as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  if (!k || typeof handle?.useUserBuffer !== 'function') return false;
  const buf = Buffer.allocUnsafeSlow(size);
  const own = s as unknown as Record<symbol, unknown>;
  own[k.buffer] = buf;
  own[k.callback] = (n: number): void => onBytes(buf.subarray(0, n));
  if (k.generator) own[k.generator] = null;
  handle.useUserBuffer(buf);
  for (let b = s.read() as Buffer | null; b !== null; b = s.read() as Buffer | null) onBytes(b);
  return true;
}

/**
 * Like `readIntoBuffer`, with no buffer of its own: each read lands in `target()`, asked again after
 * every read (the rest of the frame being assembled: protocol.ts's FrameAssembler), then
 * `landed(n)` says how many bytes arrived there. Node's TLS socket still copies each decrypted
 * record into the target; the copy from a read buffer into the frame is gone. Bytes the socket had
 * already buffered are given to `onBytes` first (to copy). Returns false (and changes nothing) where
 * this Node does not allow it.
 */
export function readIntoTargets(s: net.Socket, target: () => Uint8Array, landed: (n: number) => void, onBytes: (view: Buffer) => void): boolean {
  const k = canReadIntoBuffer() ? findSlots() : null;
  const handle = (s as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  if (!k?.generator || typeof handle?.useUserBuffer !== 'function') return false;
  for (let b = s.read() as Buffer | null; b !== null; b = s.read() as Buffer | null) onBytes(b);
  const own = s as unknown as Record<symbol, unknown>;
  const first = target();
  own[k.buffer] = first;
  own[k.callback] = (n: number): void => landed(n);
  own[k.generator] = target;
  handle.useUserBuffer(first);
  return true;
}
