/**
 * The libuv stream handle under a Node socket, read for the bytes its writes still have queued in
 * the process: the kernel has not taken them. Node drops its own reference to the handle as the
 * socket is destroyed, before the queued writes are cancelled, so a caller that reads the queue
 * then keeps the handle from earlier.
 */
import type { Socket } from 'node:net';

export interface StreamHandle {
  readonly writeQueueSize?: unknown;
  /** Under a TLS handle: the TCP handle it writes its encrypted bytes to. */
  readonly _parent?: StreamHandle | null;
}

/** The TCP handle under `socket` (over TLS, the one under the TLS handle), or null. */
export function tcpHandle(socket: Socket): StreamHandle | null {
  const handle = (socket as { _handle?: StreamHandle | null })._handle ?? null;
  return handle?._parent ?? handle;
}

/** Bytes still queued in `handle` (encrypted bytes, under TLS), or -1 when they cannot be read. */
export function queuedBytes(handle: StreamHandle | null): number {
  const queued = handle?.writeQueueSize;
  return typeof queued === 'number' ? queued : -1;
}
