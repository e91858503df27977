/**
 * ESM entry: `import tcplog from 'express-tcplog'` or `import { tcplog } from 'express-tcplog'`.
 * It re-exports the CommonJS build rather than shipping a second copy, so an app that loads the
 * package both ways still has one client per destination.
 */
import tcplog from './index.js';

export default tcplog;
export { tcplog };
export type { TcpLogOptions, TcpLogMoreOptions, TcpLogServersOptions, ServerOption } from './options.js';
export type { TcpLogStats } from './client.js';
export type { TcpLogRecord } from './record.js';
/** The class of the errors given to `onError`, for `instanceof` checks. */
export const TcpLogDeliveryError = tcplog.TcpLogDeliveryError;
export const TcpLogOptionTypeError = tcplog.TcpLogOptionTypeError;
export const TcpLogOptionRangeError = tcplog.TcpLogOptionRangeError;
export type TcpLogMiddleware = tcplog.Middleware;
