/**
 * The hook on Express's routers that `route.base_url` needs: the base in force when a route's
 * handlers run. Read at the finish, `req.baseUrl` is the base of wherever the request is then, not
 * of the route: Express restores it as the request leaves a router (a route that calls `next()`,
 * a 404 or an error handler further out), and a router the request only passed through may have
 * set a longer one that the route never saw.
 *
 * Express 4 and 5 run each route through the `handle_request` (4) or `handleRequest` (5, the
 * `router` package) method of the router's Layer class, on the layer that holds the route, right
 * after they set `req.route`. That method is wrapped once on the prototype, found through the
 * router stack of an app the middleware sees. Not `Route#dispatch`: Express 4 binds it to each route
 * as the route is made. Not an accessor for `req.route`: adding one to each request cost 7.8 %
 * more instructions per request, in the garbage collector (a request's map changed each time).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Where the wrapper reports a route about to run; never throws. */
export type Routed = (req: IncomingMessage, res: ServerResponse, route: object) => void;

type LayerMethod = (this: { route?: unknown }, req: IncomingMessage, res: ServerResponse, next: unknown) => unknown;

/**
 * Marks a Layer prototype already wrapped, by this load or another (the wrapper reports through
 * the process's hooks, to every load). The number changes with what the wrapper reports.
 */
const KEY = Symbol.for('express-tcplog.layerHook.1');

/** Apps already looked at: each is looked at once, hooked or not. */
const seen = new WeakSet<object>();

/**
 * Wraps the route-running method of the Layer class of `app`'s router, once per class. `app` is
 * what Express puts on its requests' prototype; anything else (Connect, a test double, an app
 * whose router is not Express's) is left alone, and `route.base_url` falls back to what the
 * request says at the finish.
 */
export function hookRouteLayers(app: unknown, routed: Routed): void {
  if ((typeof app !== 'function' && typeof app !== 'object') || app === null || seen.has(app)) return;
  seen.add(app);
  try {
    const prototype = layerPrototype(app);
    if (prototype === null || Object.prototype.hasOwnProperty.call(prototype, KEY)) return;
    let wrapped = false;
    for (const name of ['handleRequest', 'handle_request'] as const) {
      const original = prototype[name];
      if (typeof original !== 'function') continue;
      prototype[name] = function runLayer(this: { route?: unknown }, req, res, next): unknown {
        const route = this.route;
        if (typeof route === 'object' && route !== null) {
          try {
            routed(req, res, route);
          } catch {
            // Ours, and never meant to throw: Express's routing goes on regardless.
          }
        }
        return original.call(this, req, res, next);
      };
      wrapped = true;
    }
    if (wrapped) Object.defineProperty(prototype, KEY, { value: true });
  } catch {
    // A frozen prototype, a router that is not Express's: left as it is.
  }
}

type LayerPrototype = { handleRequest?: LayerMethod; handle_request?: LayerMethod } & object;

/** The prototype of the layers in `app`'s router, or null when it has none that look like Express's. */
function layerPrototype(app: { _router?: unknown; router?: unknown }): LayerPrototype | null {
  // Express 4 keeps its router in `_router` (its `app.router` throws); Express 5 in `app.router`,
  // made by then: the request came through it.
  const router = (app._router ?? app.router) as { stack?: unknown } | undefined;
  const stack = router?.stack;
  if (!Array.isArray(stack) || stack.length === 0) return null;
  const layer: unknown = stack[0];
  if (typeof layer !== 'object' || layer === null) return null;
  const prototype = Object.getPrototypeOf(layer) as LayerPrototype | null;
  if (prototype === null || prototype === Object.prototype) return null;
  return typeof prototype.handleRequest === 'function' || typeof prototype.handle_request === 'function'
    ? prototype
    : null;
}
