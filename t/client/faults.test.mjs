// Fault injection with plain fetch() (the @upstash/redis client would retry).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import {
  startRedis, startNginx, newToken, randomUUID, rg, sleep, freePort,
  assertCleanErrorLog, significantLogLines,
} from './harness.mjs';

let flaky;      // the Redis we stop and restart
let steady;     // a Redis that stays up
let locked;     // a Redis with --requirepass, password given in the instance URL
let hang;       // a fake "Redis": accepts, reads, never answers
const hangSockets = new Set();
let nginx;
const A = randomUUID();       // -> flaky
const B = randomUUID();       // -> steady
const H = randomUUID();       // -> hang
const P = randomUUID();       // -> locked
const PASSWORD = 'pw-' + randomBytes(12).toString('hex');
const token = newToken();
const SHORT = 1;              // server index with redisgate_timeout 500ms

const REQ_MS = 5000;          // bound for every single request in this suite

before(async () => {
  [flaky, steady, locked] = await Promise.all([
    startRedis(), startRedis(), startRedis(['--requirepass', PASSWORD]),
  ]);
  hang = net.createServer((sock) => {
    hangSockets.add(sock);
    sock.on('data', () => { /* swallow, never answer */ });
    sock.on('error', () => {});
    sock.on('close', () => hangSockets.delete(sock));
  });
  const hangPort = await freePort();
  await new Promise((resolve) => hang.listen(hangPort, '127.0.0.1', resolve));
  nginx = await startNginx({
    instances: [
      { uuid: A, url: flaky.url },
      { uuid: B, url: steady.url },
      { uuid: H, url: `redis://127.0.0.1:${hangPort}` },
      { uuid: P, url: `redis://:${PASSWORD}@127.0.0.1:${locked.port}` },
    ],
    keys: [{ token, id: 'faults' }],
    http: [
      'redisgate_timeout 5s;',
      'redisgate_connect_timeout 1s;',
      'redisgate_reconnect_backoff 50ms 500ms;',
      'redisgate_pool_size 2;',
    ].join('\n'),
    servers: [{ location: 'redisgate_timeout 500ms;' }],
  });
});

after(async () => {
  try {
    if (nginx) {
      const running = nginx.running;
      await nginx.stop();
      assert.ok(running, 'nginx master was still running at the end');
      assertCleanErrorLog(nginx.errorLog(), { allowCrit: true });
    }
  } finally {
    for (const s of hangSockets) s.destroy();
    await new Promise((r) => (hang ? hang.close(() => r()) : r()));
    await Promise.all([flaky?.stop(), steady?.stop(), locked?.stop()]);
  }
});

const call = (id, rest, init = {}) => rg(nginx, id, token, rest, { timeoutMs: REQ_MS, ...init });
const post = (id, rest, body, init = {}) =>
  call(id, rest, { method: 'POST', body: JSON.stringify(body), ...init });

test('baseline: both instances answer, sync token changes after a write', async () => {
  const a = await call(A, '/ping');
  assert.equal(a.status, 200);
  assert.deepEqual(a.json, { result: 'PONG' });
  const t1 = a.headers.get('upstash-sync-token');
  assert.ok(t1);
  const w = await call(A, '/set/base/1');
  assert.deepEqual(w.json, { result: 'OK' });
  const t2 = w.headers.get('upstash-sync-token');
  assert.ok(t2);
  assert.notEqual(t2, t1);
  assert.deepEqual((await call(B, '/ping')).json, { result: 'PONG' });
});

test('Redis stopped: 500 with a JSON error, no hang; other instance unaffected', async () => {
  assert.deepEqual((await call(A, '/set/k/v')).json, { result: 'OK' });
  await flaky.stop();
  for (let i = 0; i < 6; i++) {
    const r = await call(A, `/get/k`);        // bounded by AbortSignal.timeout(REQ_MS)
    assert.equal(r.status, 500, `try ${i}: ${r.status} ${r.text}`);
    assert.match(r.headers.get('content-type'), /application\/json/);
    assert.equal(typeof r.json?.error, 'string', r.text);
    assert.ok(r.json.error.length > 0);
    assert.equal(r.json.result, undefined);
    // a fixed message; the reason ("Connection refused") is in the log only
    assert.match(r.json.error, /^Redis unavailable: (could not connect|connection lost)$/);
  }
  // pipeline and multi-exec fail the same way (whole request 500)
  const p = await post(A, '/pipeline', [['GET', 'k'], ['PING']]);
  assert.equal(p.status, 500, p.text);
  assert.equal(typeof p.json.error, 'string');
  const m = await post(A, '/multi-exec', [['GET', 'k']]);
  assert.equal(m.status, 500, m.text);
  // meanwhile the other backend is fine
  assert.deepEqual((await call(B, '/ping')).json, { result: 'PONG' });
  // nginx logged the failure, with its reason
  assert.ok(significantLogLines(nginx.errorLog()).some((l) =>
    /\[(error|warn)\].*could not connect to Redis at redis:\/\/127\.0\.0\.1:\d+\/0: Connection refused/.test(l)),
  'an error-level line about the Redis failure');
});

test('Redis restarted: requests succeed again within a bounded number of tries', async () => {
  await flaky.restart();             // resolves once Redis answers PING
  let ok = null;
  let tries = 0;
  const statuses = [];
  for (; tries < 50 && !ok; tries++) {
    const r = await call(A, '/set/back/yes');
    statuses.push(r.status);
    if (r.status === 200) ok = r;
    else {
      assert.equal(r.status, 500, r.text);   // only "not yet" failures
      await sleep(100);
    }
  }
  assert.ok(ok, `no success after ${tries} tries: ${statuses.join(',')}`);
  assert.deepEqual(ok.json, { result: 'OK' });
  assert.deepEqual((await call(A, '/get/back')).json, { result: 'yes' });
  // every pool connection is usable again
  const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => call(A, `/incr/after-restart`)));
  assert.ok(rs.every((r) => r.status === 200), rs.map((r) => r.status).join(','));
  assert.deepEqual(rs.map((r) => r.json.result).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
});

test('Redis killed mid-request (SIGKILL while commands are in flight): 500s, then recovery', async () => {
  // DEBUG SLEEP is denied through the gateway; use a slow Lua script instead
  const slow = post(A, '', ['EVAL', 'local t = redis.call("TIME"); local s = tonumber(t[1]); while tonumber(redis.call("TIME")[1]) < s + 2 do end return 1', '0']);
  await sleep(200);
  flaky.child.kill('SIGKILL');
  const r = await slow;
  assert.equal(r.status, 500, r.text);
  assert.equal(r.json.error, 'Redis unavailable: connection lost');
  await flaky.stop();
  await flaky.start();
  let ok = false;
  for (let i = 0; i < 50 && !ok; i++) {
    const x = await call(A, '/ping');
    ok = x.status === 200;
    if (!ok) await sleep(100);
  }
  assert.ok(ok, 'recovered after the kill');
});

test('a Redis that never answers: 500 "timed out", nginx stays healthy', async () => {
  const r = await call(H, '/get/x', { server: SHORT });
  assert.equal(r.status, 500, r.text);
  assert.match(r.json.error, /timed out/i);
  // again, and with a pipeline: each one times out on its own
  const [r2, p] = await Promise.all([
    call(H, '/set/x/1', { server: SHORT }),
    post(H, '/pipeline', [['GET', 'a'], ['GET', 'b']], { server: SHORT }),
  ]);
  assert.equal(r2.status, 500);
  assert.match(r2.json.error, /timed out/i);
  assert.equal(p.status, 500);
  assert.match(p.json.error, /timed out/i);
  // the real instances on the same nginx (both servers) still answer
  assert.deepEqual((await call(B, '/ping', { server: SHORT })).json, { result: 'PONG' });
  assert.deepEqual((await call(B, '/ping')).json, { result: 'PONG' });
  assert.deepEqual((await call(A, '/ping', { server: SHORT })).json, { result: 'PONG' });
  assert.ok(nginx.running);
  assert.ok(significantLogLines(nginx.errorLog()).some((l) => /\[error\].*(timed out|did not answer in time)/.test(l)), 'timeout logged');
});

test('a shorter redisgate_timeout queued behind a longer one keeps its own deadline', async () => {
  // 5 s requests to the silent server first (the pool puts them on one
  // connection while it is not busy); the 500 ms one is then queued behind
  // them, and must not wait 5 s
  const long = [0, 1].map(() => call(H, '/get/long', { timeoutMs: 9000 }));
  await sleep(100);
  const t0 = Date.now();
  const r = await call(H, '/get/short', { server: SHORT, timeoutMs: 9000 });
  const took = Date.now() - t0;
  assert.equal(r.status, 500, r.text);
  assert.deepEqual(r.json, { error: 'Redis command timed out' });
  assert.ok(took < 3000, `the 500 ms request took ${took} ms`);
  // the connection it timed out on is dropped: what was ahead of it there
  // fails with it; a request on the other connection times out on its own
  const errors = (await Promise.all(long)).map((x) => [x.status, x.json.error]);
  for (const e of errors) {
    assert.ok(e[0] === 500 && /^Redis (command timed out|connection dropped after a command timed out)$/.test(e[1]),
      JSON.stringify(e));
  }
  assert.ok(errors.some((e) => e[1] === 'Redis connection dropped after a command timed out'),
    JSON.stringify(errors));
  assert.deepEqual((await call(B, '/ping', { server: SHORT })).json, { result: 'PONG' });
});

test('200 requests aborted by the client right after sending; nginx keeps working', async () => {
  const before = nginx.errorLog().length;
  const jobs = [];
  for (let i = 0; i < 200; i++) {
    const ac = new AbortController();
    const kind = i % 4;
    let p;
    if (kind === 0) p = fetch(nginx.url(B, `/set/abort:${i}/v`), { headers: { Authorization: `Bearer ${token}` }, signal: ac.signal });
    else if (kind === 1) {
      p = fetch(nginx.url(B, '/pipeline'), {
        method: 'POST', headers: { Authorization: `Bearer ${token}` }, signal: ac.signal,
        body: JSON.stringify(Array.from({ length: 50 }, (_, j) => ['INCR', `abort:ctr:${j}`])),
      });
    } else if (kind === 2) {
      // waiting on a Redis that never answers when the client goes away
      p = fetch(nginx.url(H, '/get/x', SHORT), { headers: { Authorization: `Bearer ${token}` }, signal: ac.signal });
    } else {
      p = fetch(nginx.url(B, '/multi-exec'), {
        method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Upstash-Encoding': 'base64' }, signal: ac.signal,
        body: JSON.stringify([['SET', `abort:m:${i}`, 'x'.repeat(1000)], ['GET', `abort:m:${i}`]]),
      });
    }
    jobs.push(p.catch((e) => e));
    setTimeout(() => ac.abort(), (i % 5));   // 0-4 ms after the request went out
  }
  const results = await Promise.all(jobs);
  // each either completed or was aborted; nothing else
  for (const r of results) {
    if (r instanceof Error) assert.equal(r.name, 'AbortError', String(r));
    else await r.arrayBuffer().catch(() => {});
  }
  // raw sockets: full request written, then the connection destroyed at once
  await Promise.all(Array.from({ length: 50 }, (_, i) => new Promise((resolve) => {
    const s = net.connect({ port: nginx.ports[i % 2], host: '127.0.0.1' }, () => {
      const id = i % 3 === 0 ? H : B;
      s.end(`GET /redis/${id}/incr/abort:raw HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`);
      s.destroy();
      resolve();
    });
    s.on('error', resolve);
  })));
  await sleep(800);                      // let hanging ops reach their 500ms timeout
  // normal requests still work, on every backend
  for (let i = 0; i < 10; i++) {
    const r = await call(B, `/set/after-abort:${i}/ok`);
    assert.deepEqual(r.json, { result: 'OK' });
  }
  const pl = await post(B, '/pipeline', [['GET', 'after-abort:3'], ['PING']]);
  assert.deepEqual(pl.json, [{ result: 'ok' }, { result: 'PONG' }]);
  assert.deepEqual((await call(A, '/ping')).json, { result: 'PONG' });
  assert.ok(nginx.running);
  const newLog = nginx.errorLog().slice(before);
  assertCleanErrorLog(newLog, { allowCrit: true });
  assert.ok(!/worker process \d+ exited/.test(newLog), 'worker did not exit');
});

test('a pipeline of 1000 commands returns 1000 entries in order', async () => {
  const cmds = [];
  for (let i = 0; i < 1000; i++) {
    if (i % 3 === 0) cmds.push(['SET', `p1k:${i}`, `v${i}`]);
    else if (i % 3 === 1) cmds.push(['GET', `p1k:${i - 1}`]);
    else cmds.push(['INCR', 'p1k:ctr']);
  }
  const r = await post(B, '/pipeline', cmds);
  assert.equal(r.status, 200);
  assert.ok(Array.isArray(r.json));
  assert.equal(r.json.length, 1000);
  let ctr = 0;
  r.json.forEach((e, i) => {
    assert.deepEqual(Object.keys(e), ['result'], `entry ${i}`);
    if (i % 3 === 0) assert.equal(e.result, 'OK');
    else if (i % 3 === 1) assert.equal(e.result, `v${i - 1}`);
    else assert.equal(e.result, ++ctr);
  });
  // and through multi-exec
  const m = await post(B, '/multi-exec', Array.from({ length: 1000 }, () => ['INCR', 'p1k:tx']));
  assert.equal(m.status, 200);
  assert.equal(m.json.length, 1000);
  assert.deepEqual(m.json.at(-1), { result: 1000 });
});

test('a 1 MB value round-trips by raw POST body and GET', async () => {
  const text = randomBytes(768 * 1024).toString('base64');    // 1 MiB of ASCII
  assert.equal(text.length, 1024 * 1024);
  const s = await call(B, '/set/big:text', { method: 'POST', body: text, headers: { 'Content-Type': 'application/octet-stream' } });
  assert.equal(s.status, 200, s.text.slice(0, 200));
  assert.deepEqual(s.json, { result: 'OK' });
  assert.deepEqual((await call(B, '/strlen/big:text')).json, { result: 1024 * 1024 });
  const g = await call(B, '/get/big:text');
  assert.equal(g.status, 200);
  assert.equal(g.json.result.length, text.length);
  assert.ok(g.json.result === text, '1 MB text value identical');

  // binary bytes, read back with Upstash-Encoding: base64
  const bin = randomBytes(1024 * 1024);
  const sb = await call(B, '/set/big:bin', { method: 'PUT', body: bin });
  assert.deepEqual(sb.json, { result: 'OK' });
  assert.deepEqual((await call(B, '/strlen/big:bin')).json, { result: bin.length });
  const gb = await call(B, '/get/big:bin', { headers: { 'Upstash-Encoding': 'base64' } });
  assert.equal(gb.status, 200);
  assert.ok(Buffer.from(gb.json.result, 'base64').equals(bin), '1 MB binary value identical');

  // the same value inside a JSON body
  const sj = await post(B, '', ['SET', 'big:json', text]);
  assert.deepEqual(sj.json, { result: 'OK' });
  const gj = await post(B, '', ['GET', 'big:json']);
  assert.ok(gj.json.result === text);
});

test('password in the instance URL: AUTH works, and the password never leaks', async () => {
  const w = await call(P, '/set/secret-k/v');
  assert.equal(w.status, 200, w.text);
  assert.deepEqual((await call(P, '/get/secret-k')).json, { result: 'v' });
  await locked.stop();
  const r = await call(P, '/get/secret-k');
  assert.equal(r.status, 500, r.text);
  assert.ok(!r.text.includes(PASSWORD), `error body must not show the password: ${r.text}`);
  await locked.start();
  let ok = false;
  for (let i = 0; i < 50 && !ok; i++) {
    ok = (await call(P, '/ping')).status === 200;
    if (!ok) await sleep(100);
  }
  assert.ok(ok, 're-authenticated after restart');
  assert.ok(!nginx.errorLog().includes(PASSWORD), 'error.log (debug level) must not contain the password');
});
