/**
 * Record -> line on the wire. Pure. The JSON text never holds a raw CR or LF (JSON.stringify
 * escapes every control character), so the delimiter is the only line break a receiver sees.
 */

export type Delimiter = '\r\n' | '\n';

export function frame(json: string, delimiter: Delimiter): string {
  return json + delimiter;
}
