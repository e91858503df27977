/**
 * Every error this package creates. Option errors are thrown once, from the factory; delivery
 * errors are never thrown: they go to `onError` and the counters.
 */

import { inspect } from 'node:util';

export const PACKAGE = 'express-tcplog';

/** What is said of a value whose text cannot be read (a revoked Proxy, a getter that throws). */
const UNSHOWABLE = 'a value that cannot be shown';

/** Shows a value the way a user would have typed it, so an error message can quote it. Never throws. */
export function show(value: unknown): string {
  try {
    // NaN and Infinity would print as JSON `null`, which hides the real mistake.
    if (typeof value === 'number') return String(value);
    if (typeof value === 'bigint') return `${value}n`;
    if (value === undefined) return 'undefined';
    if (typeof value === 'function') return `[function ${String(value.name) || 'anonymous'}]`;
    if (typeof value === 'symbol') return value.toString();
    let text: string;
    try {
      // An instance of a class is shown with its class: JSON would make it look like the plain
      // object an option may ask for.
      text = isInstance(value) ? inspected(value) : (JSON.stringify(value) ?? Object.prototype.toString.call(value));
    } catch {
      // Circular structures, BigInts inside: as Node would print them.
      text = inspected(value);
    }
    return text.length > 120 ? `${text.slice(0, 117)}...` : text;
  } catch {
    // A revoked Proxy, a getter that throws: the message must still be made.
    return UNSHOWABLE;
  }
}

function isInstance(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype !== null && prototype !== Object.prototype && prototype !== Array.prototype;
}

function inspected(value: unknown): string {
  return inspect(value, { depth: 2, breakLength: Infinity, maxArrayLength: 10, maxStringLength: 120 });
}

/**
 * The text of anything a user's function threw, for a message: its `message` when that is a
 * string, else the value as text. Never throws: a hostile value (a `message` getter that throws,
 * an object with no prototype, a revoked Proxy) would otherwise escape from the code reporting it.
 */
export function thrownText(thrown: unknown): string {
  try {
    if (typeof thrown === 'object' && thrown !== null) {
      const message = (thrown as { message?: unknown }).message;
      if (typeof message === 'string') return message;
    }
    return String(thrown);
  } catch {
    return UNSHOWABLE;
  }
}

/** Whether `value` is a Promise or another thenable. Reading `then` may throw (a Proxy). */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

function ignore(): void {}

/** Catches a Promise's rejection: left unhandled, it would end the process. */
export function ignoreRejection(value: PromiseLike<unknown>): void {
  value.then(undefined, ignore);
}

/** What a user's function threw, as an Error. `instanceof` itself may throw (a Proxy). */
export function asError(thrown: unknown): Error {
  try {
    if (thrown instanceof Error) return thrown;
  } catch {
    // Not an Error, then.
  }
  return new Error(thrownText(thrown), { cause: thrown });
}

/** The user's `onError` (may be async). */
export type ErrorHandler = (err: Error) => unknown;

/**
 * Gives an error to the user's `onError`. What it throws, or a Promise it returns that rejects,
 * is ignored: left unhandled, a rejection would end the process.
 */
export function tell(onError: ErrorHandler, error: Error): void {
  try {
    const result: unknown = onError(error);
    if (isThenable(result)) ignoreRejection(result);
  } catch {
    // A throwing onError must not reach the app either.
  }
}

/** A bad option type: `TypeError` whose message names the option, the value and what is allowed. */
export class TcpLogOptionTypeError extends TypeError {
  override name = 'TypeError';
  readonly option: string;
  /** `shown`: what to say of the value, when it must not be quoted (it may hold a key). */
  constructor(option: string, value: unknown, allowed: string, shown = show(value)) {
    super(`${PACKAGE}: option "${option}" must be ${allowed}; got ${shown}`);
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
