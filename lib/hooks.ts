/**
 * The user's functions (`skip`, `consumer`, `customFields`), run as a record is built. Whatever
 * they do (throw, return a Promise, return a value JSON cannot write), it is reported once per
 * hook and never reaches the app; the record goes on without what failed.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PACKAGE, ignoreRejection, isThenable, show, thrownText } from './errors.js';
import type { Hooks } from './options.js';
import type { CustomValue, Extras } from './record.js';

/** Reports a failing hook (`skip`, `consumer`, `customFields["x"]`); never throws. */
export type ReportHook = (hook: string, err: Error) => void;

/** What a hook that failed gives: it was reported, and its field is left out. */
const FAILED = Symbol('hook failed');

/** Whether `skip` leaves this request out. One that fails logs it. */
export function skips(hooks: Hooks, report: ReportHook, req: IncomingMessage, res: ServerResponse): boolean {
  const skip = hooks.skip;
  if (skip === null) return false;
  // Any truthy value, as morgan takes it: a JavaScript app may return a string or a match.
  const skipped = callHook(report, 'skip', () => skip(req, res));
  return skipped !== FAILED && Boolean(skipped);
}

/**
 * Calls a user function; a throw is reported once and never reaches the app. The record is built
 * as the response finishes and cannot wait: a function that returns a Promise is reported, and
 * its rejection, if any, is caught rather than left unhandled (which would end the process).
 */
function callHook(report: ReportHook, hook: string, call: () => unknown): unknown {
  try {
    const value = call();
    if (!isThenable(value)) return value;
    ignoreRejection(value);
    report(hook, new Error(`${PACKAGE}: ${hook} returned a Promise; it must return its value synchronously`));
  } catch (err) {
    report(hook, new Error(`${PACKAGE}: ${hook} threw: ${thrownText(err)}`, { cause: err }));
  }
  return FAILED;
}

/**
 * The value as plain data, or FAILED (reported): a BigInt or a cycle would lose the whole
 * record, and a function or a Symbol would remove the field it was meant to set. The copy is what
 * the record gets: a getter or a toJSON() is run once, here, and not again, with another result,
 * when the record is written.
 */
function serializable(report: ReportHook, hook: string, value: unknown): unknown {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    report(hook, new Error(`${PACKAGE}: ${hook} returned a value JSON cannot write: ${thrownText(err)}`));
    return FAILED;
  }
  if (json === undefined) {
    report(
      hook,
      new Error(
        `${PACKAGE}: ${hook} returned a value JSON cannot write (a function, a Symbol, or a toJSON() that returned one); return undefined to leave the field out`,
      ),
    );
    return FAILED;
  }
  return JSON.parse(json) as unknown;
}

/** `consumer`'s value for the record: an object, `{ id }` for a string or a number, or none. */
function consumerValue(report: ReportHook, value: unknown): unknown {
  // null as well as undefined: `req.user && {...}` gives null after Passport's logout().
  if (value === undefined || value === null || value === FAILED) return undefined;
  if (typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value))) return { id: value };
  let shown: unknown = value;
  if (typeof value === 'object') {
    const data = serializable(report, 'consumer', value);
    if (data === FAILED) return undefined;
    if (data !== null && typeof data === 'object' && !Array.isArray(data)) return data;
    // What it wrote as JSON (a Date's string, an array): quoting that runs no user code again.
    shown = data;
  }
  report(
    'consumer',
    new Error(`${PACKAGE}: consumer must return an object, a string, a number, null or undefined; got ${show(shown)}`),
  );
  return undefined;
}

/**
 * What `consumer` and `customFields` give for this request, for the record; undefined when neither
 * is set.
 */
export function hookValues(
  hooks: Hooks,
  report: ReportHook,
  req: IncomingMessage,
  res: ServerResponse,
): Extras | undefined {
  if (hooks.consumer === null && hooks.customFields.length === 0) return undefined;
  let consumer: unknown;
  if (hooks.consumer !== null) {
    const find = hooks.consumer;
    consumer = consumerValue(
      report,
      callHook(report, 'consumer', () => find(req)),
    );
  }
  const custom: CustomValue[] = [];
  for (const field of hooks.customFields) {
    const hook = `customFields[${JSON.stringify(field.name)}]`;
    let value = callHook(report, hook, () => field.fn(req, res));
    if (value !== undefined && value !== FAILED) value = serializable(report, hook, value);
    // A failing field is left out; the rest of the record stands.
    if (value !== FAILED) custom.push({ path: field.path, value });
  }
  return { consumer, custom };
}
