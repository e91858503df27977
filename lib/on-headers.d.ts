// @types/on-headers on the registry describes serve-favicon, so the module is declared here.
declare module 'on-headers' {
  import type { ServerResponse } from 'node:http';
  /** Calls `listener` (with `this` the response) just before the response head is written. */
  function onHeaders<T extends ServerResponse>(res: T, listener: (this: T) => void): void;
  export = onHeaders;
}
