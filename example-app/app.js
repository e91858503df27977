'use strict';
/**
 * A small Express 5 app that logs every request with express-tcplog:
 *
 * - app level: `app.use(tcplog(...))` logs every request;
 * - router level: the `users` router has its own instance with `api: { name: 'users' }`. A request
 *   under /users passes both and is logged once, with the innermost (router) configuration.
 *
 * `createApp(logOptions)` takes what `tcplog()` takes: a connection string such as
 * 'tcp://127.0.0.1:9999' or an options object. The middlewares are in `app.locals.loggers`, so
 * whoever runs the app can `await middleware.close()` on each at shutdown.
 */
const express = require('express');
const tcplog = require('express-tcplog');

/** The router-level instance: same destination, plus the API it belongs to. */
function usersLogger(logOptions) {
  const api = { name: 'users' };
  return typeof logOptions === 'string' ? tcplog(logOptions, { api }) : tcplog({ ...logOptions, api });
}

function createUsersRouter(logger) {
  const users = new Map([
    ['1', { id: '1', name: 'Ada' }],
    ['2', { id: '2', name: 'Grace' }],
    ['42', { id: '42', name: 'Douglas' }],
  ]);
  let nextId = 100;

  const router = express.Router();
  router.use(logger);

  router.get('/', function listUsers(req, res) {
    res.json([...users.values()]);
  });

  router.get('/:id', function getUser(req, res) {
    const user = users.get(req.params.id);
    if (!user) {
      res.status(404).json({ error: `no user ${req.params.id}` });
      return;
    }
    res.json(user);
  });

  router.post('/', express.json(), function createUser(req, res) {
    const name = req.body && req.body.name;
    if (typeof name !== 'string' || name === '') {
      res.status(400).json({ error: 'send a JSON body like {"name":"Linus"}' });
      return;
    }
    const user = { id: String(nextId++), name };
    users.set(user.id, user);
    res.status(201).location(`/users/${user.id}`).json(user);
  });

  return router;
}

function createApp(logOptions) {
  const requestLog = tcplog(logOptions);
  const usersLog = usersLogger(logOptions);

  const app = express();
  app.locals.loggers = [requestLog, usersLog];
  app.use(requestLog);

  app.get('/', function home(req, res) {
    res.type('text').send('Hello from the express-tcplog example. Try /users/42, /slow, /stream, /error.\n');
  });

  app.get('/slow', function slow(req, res) {
    setTimeout(function answerLate() {
      res.type('text').send('sorry, that took a while\n');
    }, 300);
  });

  app.get('/stream', function stream(req, res) {
    // No Content-Length: the body goes out chunked, and response.size still counts every byte.
    res.type('text');
    let sent = 0;
    const timer = setInterval(function writeChunk() {
      sent++;
      res.write(`chunk ${sent} of 5\n`);
      if (sent === 5) {
        clearInterval(timer);
        res.end();
      }
    }, 50);
    // A client that goes away mid-stream is still logged (without a complete body).
    res.on('close', function stopStreaming() {
      clearInterval(timer);
    });
  });

  app.get('/error', function fail() {
    throw new Error('this route fails on purpose');
  });

  app.use('/users', createUsersRouter(usersLog));

  // eslint-disable-next-line no-unused-vars
  app.use(function handleError(err, req, res, next) {
    res
      .status(err.status || err.statusCode || 500)
      .type('text')
      .send(`${err.message}\n`);
  });

  return app;
}

module.exports = { createApp };
