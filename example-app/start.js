'use strict';
/**
 * `npm start`: the example app plus, by default, the built-in receiver, so records show up in
 * this terminal at once.
 *
 *   node example-app/start.js                               receiver on 127.0.0.1:9999 (or a free port)
 *   node example-app/start.js --json                        receiver prints raw JSON records
 *   node example-app/start.js --collector tcp://host:5170   log to a real collector instead
 *   TCPLOG_COLLECTOR=tls://logs.example.com:6514 node example-app/start.js
 *
 * The app listens on PORT (default 3000). Ctrl-C or SIGTERM: the HTTP server closes, every
 * middleware flushes its records with close(), then the process exits on its own.
 */
const { createApp } = require('./app.js');
const { startReceiver, closeReceiver } = require('./receiver.js');

const RECEIVER_PORT = 9999;
/** How long open HTTP requests (a slow client, /stream) may take to finish at shutdown. */
const HTTP_GRACE_MS = 2000;
/** close() is bounded by the `timeout` option (10 s by default); this only guards against a bug. */
const EXIT_GUARD_MS = 15_000;

function usage() {
  return [
    'usage: node example-app/start.js [--collector tcp://host:port | tls://host:port] [--lf] [--json]',
    '',
    '  --collector URL  send records to this collector instead of the built-in receiver',
    '                   (also: TCPLOG_COLLECTOR=URL); several, comma-separated, fail over in order',
    '  --lf             end records with "\\n" instead of "\\r\\n" (Logstash, Fluentd, Fluent Bit,',
    '                   Vector); also: TCPLOG_DELIMITER=lf',
    '  --json           the built-in receiver prints raw JSON (also: TCPLOG_RECEIVER_JSON=1)',
    '  PORT=N           port of the example app (default 3000)',
  ].join('\n');
}

function parseArgs(argv) {
  const args = {
    collector: process.env.TCPLOG_COLLECTOR || null,
    lf: process.env.TCPLOG_DELIMITER === 'lf',
    json: process.env.TCPLOG_RECEIVER_JSON === '1',
    help: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--collector') args.collector = argv[++i] || '';
    else if (arg.startsWith('--collector=')) args.collector = arg.slice('--collector='.length);
    else if (arg === '--json') args.json = true;
    else if (arg === '--lf') args.lf = true;
    else if (arg === '--help' || arg === '-h') args.help = true;
    else throw new Error(`unknown argument ${JSON.stringify(arg)}`);
  }
  if (args.collector !== null && !args.collector.split(',').every((url) => /^(tcp|tls):\/\/./.test(url))) {
    throw new Error(
      `--collector must look like tcp://host:port or tls://host:port; got ${JSON.stringify(args.collector)}`,
    );
  }
  return args;
}

/** Resolves with null once `server` listens, or with the error (EADDRINUSE...) that stopped it. */
function listening(server) {
  return new Promise(function waitForListening(resolve) {
    function onListening() {
      server.off('error', onError);
      resolve(null);
    }
    function onError(error) {
      server.off('listening', onListening);
      resolve(error);
    }
    server.once('listening', onListening);
    server.once('error', onError);
  });
}

/** The built-in receiver on 127.0.0.1:9999, or on a free port when 9999 is taken. */
async function startLocalReceiver(json) {
  for (const port of [RECEIVER_PORT, 0]) {
    const server = startReceiver({ port, host: '127.0.0.1', json });
    const error = await listening(server);
    if (!error) return server;
    if (error.code !== 'EADDRINUSE' || port === 0) throw error;
    console.error(`port ${RECEIVER_PORT} is taken; the receiver uses a free port instead`);
  }
  throw new Error('unreachable');
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(`${error.message}\n\n${usage()}`);
    process.exitCode = 2;
    return;
  }
  if (args.help) {
    console.log(usage());
    return;
  }

  let receiver = null;
  let destination = args.collector;
  if (destination === null) {
    receiver = await startLocalReceiver(args.json);
    destination = `tcp://127.0.0.1:${receiver.address().port}`;
  }

  // Several collectors, comma-separated: the `servers` option fails over between them in order.
  const logOptions = { servers: destination.split(','), ...(args.lf ? { delimiter: '\n' } : {}) };
  let app;
  try {
    app = createApp(logOptions);
  } catch (error) {
    // tcplog() validates its options once, here: a bad collector URL is reported, not a stack.
    console.error(error.message);
    if (receiver) await closeReceiver(receiver);
    process.exitCode = 2;
    return;
  }
  const loggers = app.locals.loggers;

  const port = Number(process.env.PORT || 3000);
  const server = app.listen(port);
  const error = await listening(server);
  if (error) {
    console.error(`the example app cannot listen on port ${port}: ${error.message} (set PORT to use another)`);
    await Promise.all(loggers.map((logger) => logger.close()));
    if (receiver) await closeReceiver(receiver);
    process.exitCode = 1;
    return;
  }

  const base = `localhost:${port}`;
  console.error(
    [
      '',
      `express-tcplog example app on http://${base}`,
      receiver
        ? `records go to the built-in receiver on ${destination} and are printed below${args.json ? ' as JSON' : ''}`
        : `records go to ${destination} (no local receiver)`,
      '',
      'In another terminal, try:',
      `  curl ${base}/`,
      `  curl ${base}/users`,
      `  curl ${base}/users/42`,
      `  curl ${base}/users/7                  (404)`,
      `  curl -X POST ${base}/users -H 'content-type: application/json' -d '{"name":"Linus"}'`,
      `  curl ${base}/slow                     (~300 ms)`,
      `  curl ${base}/stream                   (chunked)`,
      `  curl ${base}/error                    (500)`,
      `  curl -m 0.1 ${base}/slow              (client gives up: logged without a status)`,
      '',
      'Ctrl-C to stop (records still buffered are flushed first).',
      '',
    ].join('\n'),
  );

  let stopping = false;
  async function shutdown(signal) {
    if (stopping) {
      console.error(`${signal} again: exiting now`);
      process.exit(130);
    }
    stopping = true;
    console.error(
      `\n${signal}: closing the HTTP server, then flushing records ` +
        `(up to the 10 s timeout if the collector is unreachable; ${signal === 'SIGINT' ? 'Ctrl-C' : signal} again to quit now)`,
    );
    // Guard, unref'd so that it never holds the process itself: if something still does after
    // the orderly shutdown below, exit anyway rather than hang.
    setTimeout(function forceExit() {
      console.error('shutdown took too long; exiting');
      process.exit(1);
    }, EXIT_GUARD_MS).unref();

    await new Promise(function closeHttp(resolve) {
      server.close(() => resolve());
      server.closeIdleConnections();
      // Requests still running get a moment to finish (and be logged), then their sockets go.
      setTimeout(() => server.closeAllConnections(), HTTP_GRACE_MS).unref();
    });
    await Promise.all(loggers.map((logger) => logger.close()));
    const { records, sent, dropped, buffered } = loggers[0].stats();
    console.error(`records: ${records}, sent: ${sent}, dropped: ${dropped}, buffered: ${buffered}`);
    if (receiver) await closeReceiver(receiver);
    // Nothing else to do: the process exits by itself once the event loop is empty.
  }
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, function onSignal() {
      shutdown(signal).catch(function shutdownFailed(error) {
        console.error(error);
        process.exit(1);
      });
    });
  }
}

main().catch(function failed(error) {
  console.error(error);
  process.exit(1);
});
