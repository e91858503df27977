/**
 * Every error this package creates. Option errors are thrown once, from the factory; delivery
 * errors are never thrown: they go to `onError` and the counters.
 */

export const PACKAGE = 'express-tcplog';

/** Shows a value the way a user would have typed it, so an error message can quote it. */
export function show(value: unknown): string {
  // NaN and Infinity would print as JSON `null`, which hides the real mistake.
  if (typeof value === 'number') return String(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return `[function ${value.name || 'anonymous'}]`;
  if (typeof value === 'symbol') return value.toString();
  let text: string;
  try {
    text = JSON.stringify(value) ?? Object.prototype.toString.call(value);
  } catch {
    // Circular structures and the like: the type is still worth showing.
    text = Object.prototype.toString.call(value);
  }
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}

/** A bad option type: `TypeError` whose message names the option, the value and what is allowed. */
export class TcpLogOptionTypeError extends TypeError {
  override name = 'TypeError';
  readonly option: string;
  constructor(option: string, value: unknown, allowed: string) {
    super(`${PACKAGE}: option "${option}" must be ${allowed}; got ${show(value)}`);
    this.option = option;
  }
}

/** A value of the right type outside its range. */
export class TcpLogOptionRangeError extends RangeError {
  override name = 'RangeError';
  readonly option: string;
  constructor(option: string, value: unknown, allowed: string) {
    super(`${PACKAGE}: option "${option}" must be ${allowed}; got ${show(value)}`);
    this.option = option;
  }
}

/** A delivery problem, given to `onError`. `code` is Node's (`ECONNREFUSED`...) or ours. */
export class TcpLogDeliveryError extends Error {
  override name = 'TcpLogDeliveryError';
  readonly code: string;
  readonly destination: string;
  constructor(destination: string, code: string, message: string, cause?: unknown) {
    super(`${PACKAGE}: ${destination}: ${message}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.destination = destination;
  }
}
