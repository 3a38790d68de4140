// 10,000 streams on one nginx worker (stream-load.mjs): every stream gets
// every one of 100 messages, in order; the worker keeps one subscriber
// connection to Redis for all of them; once they close, the connection
// and the redisgate_streams gauge go.  Behaviour only: the publish-to-
// receive latencies and the worker's memory per idle stream are printed
// as diagnostics, never asserted (make bench has them as targets).
//
// STREAM_LOAD_STREAMS (10000) and STREAM_LOAD_PROCESSES (client processes,
// 0: this one) change the load.  Needs `ulimit -n` above the streams (the
// test process and nginx's worker each hold one socket per stream).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  startRedis, startNginx, newToken, randomUUID, freePort, stopAll, significantLogLines,
} from './harness.mjs';
import { streamLoad, childPids } from './stream-load.mjs';

const STREAMS = Number(process.env.STREAM_LOAD_STREAMS || 10000);
const MESSAGES = 100;
const PROCESSES = Number(process.env.STREAM_LOAD_PROCESSES || 0);
const TOKEN = newToken();
const ID = randomUUID();

// the soft limit on open files of this process (nginx inherits it)
function openFilesLimit() {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m[1] === 'unlimited' ? Infinity : Number(m[1]);
  } catch { return null; }
}
const LIMIT = openFilesLimit();
const ENOUGH = LIMIT === null || LIMIT >= STREAMS + 500;

let redis;
let nginx;
let statusPort;

before(async () => {
  if (!ENOUGH) return;
  redis = await startRedis();
  statusPort = await freePort();
  nginx = await startNginx({
    instances: [{ uuid: ID, url: redis.url }],
    keys: [{ token: TOKEN, id: 'stream-load', scopes: 'read' }],
    workers: 1,
    workerConnections: STREAMS + 1000,
    // debug would write gigabytes
    logLevel: 'info',
    http: [
      'server {',
      `  listen 127.0.0.1:${statusPort};`,
      '  location = /status { redisgate_status; }',
      '}',
    ].join('\n'),
  });
});

after(async () => {
  await stopAll(nginx, redis);
});

test(`${STREAMS} streams on one worker: each gets all ${MESSAGES} messages, in order; one subscriber connection`,
  { skip: ENOUGH ? false : `ulimit -n is ${LIMIT}: ${STREAMS} streams need ${STREAMS + 500}`, timeout: 120000 },
  async (t) => {
    const workers = childPids(nginx.pid);
    assert.equal(workers.length, 1, `workers: ${workers}`);
    const logStart = nginx.errorLog().length;
    const t0 = Date.now();
    const r = await streamLoad({
      url: nginx.base, instance: ID, token: TOKEN, streams: STREAMS, messages: MESSAGES,
      redisPort: redis.port, workerPids: workers, statusUrl: `http://127.0.0.1:${statusPort}/status`,
      processes: PROCESSES, totalTimeoutMs: 100000,
    });
    const lat = r.latencyMs;
    t.diagnostic(`${r.subscribed}/${r.streams} streams subscribed in ${r.openMs} ms; ` +
      `${r.delivered}/${r.expected} messages delivered, ${r.missing} missing`);
    t.diagnostic(`publish to receive: p50 ${lat.p50} ms, p99 ${lat.p99} ms, max ${lat.max} ms; ` +
      `a PUBLISH to all ${r.subscribed}: p50 ${r.fanoutMs.p50} ms, max ${r.fanoutMs.max} ms`);
    t.diagnostic(`worker memory per idle stream: ${r.memory.bytesPerIdleStream} bytes (RssAnon; ` +
      `VmRSS ${r.memory.vmRssBytesPerStream}, Private_Dirty ${r.memory.privateDirtyBytesPerStream})`);
    t.diagnostic(`worker CPU: ${r.cpu.workerUsPerOpen} µs per stream opened, ` +
      `${r.cpu.workerUsPerDelivery} µs per message delivered`);
    t.diagnostic(`subscriber connections: ${r.pubsubConnections} (${r.pubsubClients.join('; ')}); ` +
      `after closing: ${r.pubsubConnectionsAfterClose}; redisgate_streams ${r.streamsGauge.open} then ` +
      `${r.streamsGauge.afterClose}; load ${r.wallMs} ms, test ${Date.now() - t0} ms`);

    // every stream opened and subscribed
    assert.deepEqual(r.openFailures, {});
    assert.equal(r.subscribed, STREAMS);
    assert.equal(r.streamsGauge.open, STREAMS);
    // one subscriber connection for the worker (at most two: one being
    // replaced); PUBLISH reaches only it
    assert.ok(r.pubsubConnections >= 1 && r.pubsubConnections <= 2,
      `${r.pubsubConnections} subscriber connections: ${r.pubsubClients.join('\n')}`);
    assert.equal(r.channelSubscribers, 1);
    assert.deepEqual(r.publishReceivers, { min: 1, max: 1 });
    // every stream got every message, once, in order, and nothing else
    assert.deepEqual({
      missing: r.missing, complete: r.complete, outOfOrder: r.outOfOrder,
      duplicates: r.duplicates, foreign: r.foreign, endedEarly: r.endedEarly,
      errorEvents: r.errorEvents, protocolErrors: r.protocolErrors,
    }, {
      missing: 0, complete: STREAMS, outOfOrder: 0, duplicates: 0, foreign: 0,
      endedEarly: {}, errorEvents: {}, protocolErrors: [],
    });
    // all closed: the subscriber connection and the streams are gone
    assert.equal(r.pubsubConnectionsAfterClose, 0);
    assert.equal(r.streamsGauge.afterClose, 0);

    const log = significantLogLines(nginx.errorLog().slice(logStart));
    assert.deepEqual(log.filter((l) => /\[(error|crit|alert|emerg)\]/.test(l)), []);
  });
