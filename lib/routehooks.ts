/**
 * The hook on Express's routers that `route.base_url` needs: the base in force when a route's
 * handlers run. Read at the finish, `req.baseUrl` is the base of wherever the request is then, not
 * of the route: Express restores it as the request leaves a router (a route that calls `next()`,
 * a 404 or an error handler further out), and a router the request only passed through may have
 * set a longer one that the route never saw.
 *
 * Express 4 and 5 run each route through the `handle_request` (4) or `handleRequest` (5, the
 * `router` package) method of the router's Layer class, on the layer that holds the route, right
 * after they set `req.route`. That method is wrapped once on the prototype. The class is found
 * through the router of the app a request belongs to when it reaches an instance (before its
 * route runs, so even the first request's is seen), and through a route that ran unseen, for the
 * requests after it: a router of another copy of Express or of the `router` package, or Express
 * behind an instance in front of it. Not `Route#dispatch`: Express 4 binds it to each route as
 * the route is made. Not an accessor for `req.route`: adding one to each request cost 7.8 % more
 * instructions per request, in the garbage collector (a request's map changed each time).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Where the wrapper reports a route about to run; never throws. */
export type Routed = (req: IncomingMessage, res: ServerResponse, route: object) => void;

type LayerMethod = (this: { route?: unknown }, req: IncomingMessage, res: ServerResponse, next: unknown) => unknown;

/** What Express's Layer class has, in Express 4 (snake case) and in the `router` package (5). */
interface LayerPrototype {
  match?: unknown;
  handleRequest?: LayerMethod;
  handleError?: unknown;
  handle_request?: LayerMethod;
  handle_error?: unknown;
}

/**
 * On a Layer prototype: the `Routed` of each set of process hooks (see httphooks.ts) a wrapper
 * reports to. Every load that shares those hooks is told through one wrapper; a copy of the
 * package with hooks of its own (another version) adds a wrapper of its own. Every version keeps
 * an array of them there: anything else, and no version wraps the class again.
 */
const KEY = Symbol.for('express-tcplog.layerHooks');

/** Apps and routes already looked at: each is looked at once, hooked or not. */
const seen = new WeakSet<object>();

/**
 * Hooks the Layer class of the router of `app`, what Express puts on its requests' prototype.
 * Anything else (Connect, a test double, an app whose router is not Express's) is left alone.
 */
export function hookAppRoutes(app: unknown, routed: Routed): void {
  if (firstLook(app)) hook(stackPrototype(routerOf(app)), routed);
}

/**
 * Hooks the Layer class of a route that ran without the hook (`req.route` at the finish): its own
 * layers are of the class its router runs it with.
 */
export function hookRouteClass(route: unknown, routed: Routed): void {
  if (firstLook(route)) hook(stackPrototype(route), routed);
}

function firstLook(value: unknown): value is object {
  if ((typeof value !== 'function' && typeof value !== 'object') || value === null || seen.has(value)) return false;
  seen.add(value);
  return true;
}

/**
 * Express 4 keeps an app's router in `_router` (its `app.router` throws); Express 5 in
 * `app.router`, made by then: the request came through it.
 */
function routerOf(app: { _router?: unknown; router?: unknown }): unknown {
  try {
    return app._router ?? app.router;
  } catch {
    return undefined;
  }
}

/**
 * The prototype of the first layer in `owner.stack`, if it is shaped as Express's Layer: a class
 * of the app's that happens to have a `handleRequest` is not wrapped.
 */
function stackPrototype(owner: unknown): LayerPrototype | null {
  try {
    const stack = (owner as { stack?: unknown } | null | undefined)?.stack;
    if (!Array.isArray(stack) || stack.length === 0) return null;
    const layer: unknown = stack[0];
    if (typeof layer !== 'object' || layer === null) return null;
    const prototype = Object.getPrototypeOf(layer) as LayerPrototype | null;
    if (prototype === null || prototype === Object.prototype || typeof prototype.match !== 'function') return null;
    const express5 = typeof prototype.handleRequest === 'function' && typeof prototype.handleError === 'function';
    const express4 = typeof prototype.handle_request === 'function' && typeof prototype.handle_error === 'function';
    return express5 || express4 ? prototype : null;
  } catch {
    return null;
  }
}

function hook(prototype: LayerPrototype | null, routed: Routed): void {
  if (prototype === null) return;
  try {
    const own = Object.getOwnPropertyDescriptor(prototype, KEY);
    let reporting: Routed[];
    if (own === undefined) {
      reporting = [];
      // First, so that a prototype that takes no new property (sealed) is never wrapped: with no
      // mark, each app found would wrap it once more.
      Object.defineProperty(prototype, KEY, { value: reporting });
    } else if (Array.isArray(own.value)) {
      reporting = own.value as Routed[];
    } else {
      return;
    }
    if (reporting.includes(routed)) return;
    reporting.push(routed);
    for (const name of ['handleRequest', 'handle_request'] as const) {
      const original = prototype[name];
      if (typeof original !== 'function') continue;
      prototype[name] = function runLayer(
        this: { route?: unknown },
        req: IncomingMessage,
        res: ServerResponse,
      ): unknown {
        const route = this.route;
        if (typeof route === 'object' && route !== null) {
          try {
            routed(req, res, route);
          } catch {
            // Ours, and never meant to throw: Express's routing goes on regardless.
          }
        }
        // Every argument, as called: `arguments` rather than a rest array, which V8 passes on
        // without making one per call.
        // eslint-disable-next-line prefer-rest-params
        return Reflect.apply(original, this, arguments) as unknown;
      };
    }
  } catch {
    // A frozen prototype: left as it is.
  }
}
