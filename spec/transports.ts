/**
 * The client suites run twice: over plain TCP and over TLS (verified against the test CA).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { TcpLogOptions } from '../lib/options.js';
import { startLineServer, type LineServer } from './helpers.js';

const fixtures = path.resolve(__dirname, '../../spec/fixtures');
export const pem = (name: string): string => readFileSync(path.join(fixtures, name), 'utf8');

export interface Transport {
  readonly name: 'tcp' | 'tls';
  /** A receiver on 127.0.0.1 (port 0 for a free one). */
  startReceiver(port?: number): Promise<LineServer>;
  /** Logger options reaching a receiver of this transport on `port`. */
  destination(port: number): Pick<TcpLogOptions, 'host' | 'port' | 'tls'>;
}

export const transports: readonly Transport[] = [
  {
    name: 'tcp',
    startReceiver: (port = 0) => startLineServer(port),
    destination: (port) => ({ host: '127.0.0.1', port }),
  },
  {
    name: 'tls',
    startReceiver: (port = 0) => startLineServer(port, { key: pem('server-key.pem'), cert: pem('server-cert.pem') }),
    destination: (port) => ({ host: '127.0.0.1', port, tls: { ca: pem('ca-cert.pem') } }),
  },
];
