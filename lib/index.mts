/**
 * ESM entry: `import tcplog from 'express-tcplog'` or `import { tcplog } from 'express-tcplog'`.
 * It re-exports the CommonJS build rather than shipping a second copy, so an app that loads the
 * package both ways still has one client per destination.
 */
import tcplog from './index.js';

export default tcplog;
export { tcplog };
export type { TcpLogOptions, TcpLogMoreOptions, TcpLogServersOptions, ServerOption } from './options.js';
export type { TcpLogStats } from './stats.js';
export type { TcpLogRecord } from './record.js';
/** The class of the errors given to `onError`, for `instanceof` checks, and their type. */
export const TcpLogDeliveryError = tcplog.TcpLogDeliveryError;
export type TcpLogDeliveryError = tcplog.TcpLogDeliveryError;
/** Thrown by the factory for an option of the wrong type. */
export const TcpLogOptionTypeError = tcplog.TcpLogOptionTypeError;
export type TcpLogOptionTypeError = tcplog.TcpLogOptionTypeError;
/** Thrown by the factory for an option out of range. */
export const TcpLogOptionRangeError = tcplog.TcpLogOptionRangeError;
export type TcpLogOptionRangeError = tcplog.TcpLogOptionRangeError;
export type TcpLogMiddleware = tcplog.Middleware;
