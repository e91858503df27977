/**
 * One client per destination, shared by every middleware instance that points there, and
 * reference-counted so that the last instance to close releases the connection.
 */
import { TcpLogClient } from './client.js';
import type { ErrorHandler } from './errors.js';
import type { DestinationSettings } from './options.js';

interface Entry {
  client: TcpLogClient;
  refs: number;
}

const clients = new Map<string, Entry>();

export function acquireClient(settings: DestinationSettings, onError: ErrorHandler | null): TcpLogClient {
  let entry = clients.get(settings.key);
  if (!entry) {
    entry = { client: new TcpLogClient(settings), refs: 0 };
    clients.set(settings.key, entry);
  }
  entry.refs++;
  entry.client.addReporter(onError);
  return entry.client;
}

/** Releases one instance's hold; the last one shuts the client down. Returns records dropped. */
export function releaseClient(client: TcpLogClient, onError: ErrorHandler | null): number {
  const entry = clients.get(client.settings.key);
  if (!entry || entry.client !== client) return 0;
  client.removeReporter(onError);
  entry.refs--;
  if (entry.refs > 0) return 0;
  clients.delete(client.settings.key);
  return client.shutdown();
}

/** How many destinations have a live client (for tests and diagnostics). */
export function activeClientCount(): number {
  return clients.size;
}
