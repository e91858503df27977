'use strict';
/**
 * The load generator: autocannon in its own process, driven over IPC. 'run' { url, amount } sends
 * a fixed number of requests ({ url, duration } a fixed time) and replies with requests/s, latency
 * percentiles and errors. The requests carry the headers of a typical API client.
 */
const autocannon = require('autocannon');
const { serve } = require('./common.js');

const HEADERS = {
  accept: 'application/json',
  'accept-encoding': 'gzip, deflate, br',
  'accept-language': 'en-GB,en;q=0.9',
  authorization: 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl',
  'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
  // A new id for every request, as a proxy in front of the app would give (autocannon's
  // idReplacement): a constant one would be a header the logger's cache always has.
  'x-request-id': '[<id>]',
};

function run({ url, amount, duration, connections = 32 }) {
  return new Promise(function runLoad(resolve, reject) {
    // sampleInt: autocannon notices a finished `amount` only at its next sample tick.
    const options = {
      url,
      connections,
      pipelining: 1,
      headers: HEADERS,
      idReplacement: true,
      timeout: 10,
      sampleInt: 100,
    };
    if (amount) options.amount = amount;
    else options.duration = duration;
    const started = process.hrtime.bigint();
    let lastResponse = started;
    const cpuBefore = process.cpuUsage();
    const instance = autocannon(options, function onDone(err, result) {
      // Up to the last response, not to 'done', which waits for the tick.
      const elapsedMs = Number(lastResponse - started) / 1e6;
      const cpu = process.cpuUsage(cpuBefore);
      if (err) {
        reject(err);
        return;
      }
      const completed = result['2xx'] + result.non2xx;
      resolve({
        requests: completed,
        ok: result['2xx'],
        non2xx: result.non2xx,
        errors: result.errors,
        timeouts: result.timeouts,
        elapsedMs,
        rps: completed / (elapsedMs / 1000),
        // Near 1: autocannon itself was the bottleneck (one core of its own at most).
        loadCpuFraction: (cpu.user + cpu.system) / 1000 / elapsedMs,
        latency: {
          mean: result.latency.average,
          p50: result.latency.p50,
          p90: result.latency.p90,
          p99: result.latency.p99,
          max: result.latency.max,
        },
      });
    });
    instance.on('response', function onResponse() {
      lastResponse = process.hrtime.bigint();
    });
  });
}

serve({
  run,
  stop() {
    setTimeout(function exitAfterReply() {
      process.exit(0);
    }, 20);
    return {};
  },
});
process.send({ type: 'ready' });
