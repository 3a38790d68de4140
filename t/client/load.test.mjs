// Faults under load: Redis and PostgreSQL killed and restarted, a slow
// Redis with huge replies, nginx reloaded, thousands of clients that abort,
// slow-loris bodies.  Each phase is bounded in time (FAULT_SECONDS, 3 by
// default; `make faults` runs them longer) and loopback only.  Every phase
// checks that nginx answered every request it was sent with a status the
// phase allows and a JSON body, that no worker crashed or raised an alert,
// and that everything answers correctly afterwards.  The counts of each
// phase are printed as diagnostics (docs/hardening.md keeps long runs').
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  startRedis, startNginx, startPg, newToken, randomUUID, sleep, freePort,
  assertCleanErrorLog, hammer, summary, untilOk, killTwiceUnderLoad,
} from './harness.mjs';

const SECONDS = Number(process.env.FAULT_SECONDS || 3);
const PHASE_MS = SECONDS * 1000;
const CLIENTS = Number(process.env.FAULT_CLIENTS || 32);
const ABORTING = Number(process.env.FAULT_ABORTING || 2000);
const REQ_MS = 10000;            // bound of every single request
const WORKERS = 2;
const POOL = 2;                  // redisgate_pool_size

let flaky;       // Redis we kill
let steady;      // Redis that stays up
let slowBack;    // Redis behind the slow proxy
let slow;        // the proxy: replies cut in pieces, each one late
let pg;          // key store
let nginx;
let pgNginx;

const A = randomUUID();          // -> flaky
const B = randomUUID();          // -> steady
const S = randomUUID();          // -> slow proxy -> slowBack
const token = newToken();
const SHORT = 1;                 // server: redisgate_timeout 300ms
const LORIS = 2;                 // server: client_body_timeout 1s

const proxySockets = new Set();

// ---------------------------------------------------------------------------
// an HTTP client of our own: no retries, one socket per request unless an
// agent is given, every request bounded

function request({ port, method = 'GET', path: p, body, headers = {}, agent = false }) {
  return new Promise((resolve, reject) => {
    const h = { Authorization: `Bearer ${token}`, ...headers };
    if (body !== undefined) h['Content-Length'] = Buffer.byteLength(body);
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers: h, agent },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json;
          try { json = JSON.parse(text); } catch { json = undefined; }
          resolve({ status: res.statusCode, headers: res.headers, text, json });
        });
        res.on('error', reject);
      });
    req.setTimeout(REQ_MS, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })));
    req.on('error', reject);
    req.end(body);
  });
}

const get = (id, rest, server = 0, opts = {}) =>
  request({ port: nginx.ports[server], path: `/redis/${id}${rest}`, ...opts });
const post = (id, rest, json, server = 0, opts = {}) =>
  request({ port: nginx.ports[server], method: 'POST', path: `/redis/${id}${rest}`, body: JSON.stringify(json), ...opts });

// the fixed messages of a Redis that went away (the reasons go to the log)
const REDIS_DOWN = ['Redis unavailable: could not connect', 'Redis unavailable: connection lost'];

// the pids of a process's children (nginx workers of a master)
function children(pid) {
  const out = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function rssKb(pid) {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch { return 0; }
}

// connections a Redis has, other than the one asking
async function redisClients(srv) {
  // CLIENT LIST is a bulk reply: read it whole, one line per client
  const sock = net.connect({ port: srv.port, host: '127.0.0.1' });
  const text = await new Promise((resolve, reject) => {
    let buf = '';
    sock.on('connect', () => sock.write('CLIENT LIST\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      const m = /^\$(\d+)\r\n/.exec(buf);
      if (m && buf.length >= m[0].length + Number(m[1]) + 2) resolve(buf.slice(m[0].length, m[0].length + Number(m[1])));
    });
    sock.on('error', reject);
    setTimeout(() => reject(new Error('CLIENT LIST timed out')), 2000);
  }).finally(() => sock.destroy());
  return text.split('\n').filter((l) => l.startsWith('id=')).length - 1;
}

// a TCP proxy to a Redis whose replies come in 64 KB pieces, 10 ms apart
async function startSlowProxy(target) {
  const server = net.createServer((client) => {
    const upstream = net.connect({ port: target.port, host: '127.0.0.1' });
    proxySockets.add(client);
    proxySockets.add(upstream);
    const queue = [];
    let busy = false;
    const pump = () => {
      if (busy || client.destroyed) return;
      const piece = queue.shift();
      if (!piece) return;
      busy = true;
      setTimeout(() => { busy = false; if (!client.destroyed) client.write(piece); pump(); }, 10);
    };
    upstream.on('data', (d) => {
      for (let i = 0; i < d.length; i += 65536) queue.push(d.subarray(i, i + 65536));
      pump();
    });
    client.on('data', (d) => upstream.write(d));
    const close = () => { client.destroy(); upstream.destroy(); proxySockets.delete(client); proxySockets.delete(upstream); };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { server, port };
}

// ---------------------------------------------------------------------------

before(async () => {
  [flaky, steady, slowBack, pg] = await Promise.all([
    startRedis(), startRedis(), startRedis(), startPg(),
  ]);
  slow = await startSlowProxy(slowBack);
  nginx = await startNginx({
    workers: WORKERS,
    logLevel: 'info',
    instances: [
      { uuid: A, url: flaky.url },
      { uuid: B, url: steady.url },
      { uuid: S, url: `redis://127.0.0.1:${slow.port}` },
    ],
    keys: [{ token, id: 'load' }],
    http: [
      'redisgate_timeout 5s;',
      'redisgate_connect_timeout 1s;',
      'redisgate_reconnect_backoff 50ms 200ms;',
      `redisgate_pool_size ${POOL};`,
    ].join('\n'),
    servers: [
      { location: 'redisgate_timeout 300ms;' },
      { location: 'client_body_timeout 1s;' },
    ],
  });
});

after(async () => {
  try {
    for (const ng of [nginx, pgNginx]) {
      if (!ng) continue;
      const running = ng.running;
      await ng.stop();
      assert.ok(running, 'nginx master was still running at the end');
      assertCleanErrorLog(ng.errorLog(), { allowCrit: true });
    }
  } finally {
    for (const s of proxySockets) s.destroy();
    await new Promise((r) => (slow ? slow.server.close(() => r()) : r()));
    await Promise.all([flaky?.stop(), steady?.stop(), slowBack?.stop(), pg?.stop()]);
  }
});

function assertHealthy(ng, logFrom = 0) {
  assert.ok(ng.running, 'nginx is running');
  const log = ng.errorLog().slice(logFrom);
  assertCleanErrorLog(log, { allowCrit: true });
  // old workers leave after a reload with code 0; a crash says "on signal"
  assert.ok(!/worker process \d+ exited with code [1-9]/.test(log), 'no worker failed');
}

test('Redis SIGKILLed and restarted twice under load: 200 or a JSON 500, then full recovery', async (t) => {
  const from = nginx.errorLog().length;
  const stats = await killTwiceUnderLoad({
    redis: flaky,
    ms: PHASE_MS,
    clients: CLIENTS,
    key: 'load:kill',
    get: (rest) => get(A, rest),
    post: (rest, json) => post(A, rest, json),
    down: REDIS_DOWN,
  });
  t.diagnostic(summary('redis kill', stats));
  assert.deepEqual(stats.wrong, []);
  assert.deepEqual(stats.errors, {}, 'every request got an HTTP answer');
  assert.ok(stats.status[200] > 0 && stats.status[500] > 0, 'both served and failed requests');

  assert.ok(await untilOk(async () => (await get(A, '/ping')).status === 200), 'recovered');
  const key = `load:after:${randomBytes(4).toString('hex')}`;
  const r = await post(A, '/pipeline', Array.from({ length: 100 }, () => ['INCR', key]));
  assert.deepEqual(r.json.map((e) => e.result), Array.from({ length: 100 }, (_, i) => i + 1));
  assertHealthy(nginx, from);
});

test('a slow Redis with huge replies: exact bytes, its neighbours answered, a timeout cuts only it', async (t) => {
  const from = nginx.errorLog().length;
  const big = randomBytes(2 * 1024 * 1024).toString('hex');        // 4 MB
  const digest = createHash('sha256').update(big).digest('hex');
  const set = await request({ port: nginx.port, method: 'POST', path: `/redis/${S}/set/load:big`, body: big });
  assert.deepEqual(set.json, { result: 'OK' });

  const t0 = Date.now();
  const [whole, ...small] = await Promise.all([
    get(S, '/get/load:big'),
    ...Array.from({ length: 20 }, (_, i) => get(S, `/echo/small-${i}`)),
  ]);
  t.diagnostic(`4 MB through the slow proxy: ${Date.now() - t0} ms`);
  assert.equal(whole.status, 200);
  assert.equal(createHash('sha256').update(whole.json.result).digest('hex'), digest);
  small.forEach((r, i) => assert.deepEqual(r.json, { result: `small-${i}` }));

  // 300 ms is not enough for 64 pieces 10 ms apart when the reply is
  // built whole (a /pipeline's); a single GET streams it, and a value that
  // keeps coming is not late
  const cut = await post(S, '/pipeline', [['GET', 'load:big']], SHORT);
  assert.equal(cut.status, 500, cut.text.slice(0, 200));
  assert.match(cut.json.error, /timed out/i);
  assert.deepEqual((await get(S, '/echo/after-timeout', SHORT)).json, { result: 'after-timeout' });
  const streamed = await get(S, '/get/load:big', SHORT);
  assert.equal(streamed.status, 200);
  assert.equal(createHash('sha256').update(streamed.json.result).digest('hex'), digest);

  // a huge array: 100,000 elements in one reply, through a fast Redis
  const list = `load:list:${randomBytes(4).toString('hex')}`;
  for (let i = 0; i < 100000; i += 10000) {
    const r = await post(B, '', ['RPUSH', list, ...Array.from({ length: 10000 }, (_, j) => `e${i + j}`)]);
    assert.equal(r.json.result, i + 10000);
  }
  const all = await get(B, `/lrange/${list}/0/-1`);
  assert.equal(all.status, 200);
  assert.equal(all.json.result.length, 100000);
  assert.equal(all.json.result[99999], 'e99999');
  assertHealthy(nginx, from);
});

test('nginx -s reload under load: every request answered 200, old workers leave, no connection leaked', async (t) => {
  const from = nginx.errorLog().length;
  const master = nginx.pid;
  const before = children(master);
  assert.equal(before.length, WORKERS);
  const t0 = Date.now();
  const reloads = (async () => {
    for (const at of [0.25, 0.5, 0.75]) {
      await sleep(PHASE_MS * at - (Date.now() - t0));
      process.kill(master, 'SIGHUP');
    }
  })();
  const stats = await hammer({
    ms: PHASE_MS,
    clients: CLIENTS,
    send: (w, i) => (i % 3
      ? get(B, `/incr/load:reload:${w}`)
      : post(B, '/multi-exec', [['INCR', `load:reload:m${w}`], ['GET', `load:reload:m${w}`]])),
    check: (r) => (r.status === 200 ? null : 'status'),
  });
  await reloads;
  t.diagnostic(summary('reload x3', stats));
  assert.deepEqual(stats.wrong, []);
  assert.deepEqual(stats.errors, {}, 'every request got an HTTP answer');

  // the old workers finish and exit; only the new ones stay
  assert.ok(await untilOk(async () => {
    const now = children(master);
    return now.length === WORKERS && now.every((p) => !before.includes(p));
  }), `old workers exited (children now ${children(master)})`);
  // each worker keeps at most POOL connections to this Redis
  assert.ok(await untilOk(async () => (await redisClients(steady)) <= WORKERS * POOL),
    `Redis connections after the reloads: ${await redisClients(steady)}`);
  assert.deepEqual((await get(B, '/ping')).json, { result: 'PONG' });
  // "open socket ... left in connection" would be an [alert]
  assertHealthy(nginx, from);
  assert.match(nginx.errorLog().slice(from), /reconfiguring/);
});

test('thousands of clients aborting mid-request: nothing leaks, everyone else served', async (t) => {
  const from = nginx.errorLog().length;
  const workers = children(nginx.pid);
  const rss0 = workers.map(rssKb);
  const pipeline = JSON.stringify(Array.from({ length: 50 }, (_, j) => ['INCR', `load:abort:${j}`]));
  const kinds = [
    // half a request line
    (s) => s.write(`GET /redis/${B}/get/x HT`),
    // headers, then a tenth of the body
    (s) => s.write(`POST /redis/${B}/pipeline HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
                   `Content-Length: ${pipeline.length}\r\n\r\n${pipeline.slice(0, pipeline.length / 10)}`),
    // a whole request to the slow Redis, gone before it answers
    (s) => s.write(`GET /redis/${S}/echo/gone HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`),
    // a whole pipeline, gone at once
    (s) => s.write(`POST /redis/${B}/pipeline HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
                   `Content-Length: ${pipeline.length}\r\n\r\n${pipeline}`),
    // a multi-exec, half-closed, then gone
    (s) => s.end(`POST /redis/${B}/multi-exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
                 `Content-Length: 25\r\n\r\n[["INCR","load:abort:m"]]`),
  ];
  let opened = 0;
  const batch = 250;
  for (let i = 0; i < ABORTING; i += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, ABORTING - i) }, (_, j) => new Promise((resolve) => {
      const n = i + j;
      const s = net.connect({ port: nginx.ports[n % 2], host: '127.0.0.1' }, () => {
        opened++;
        kinds[n % kinds.length](s);
        setTimeout(() => { s.destroy(); resolve(); }, n % 4);
      });
      s.on('error', () => resolve());
    })));
  }
  t.diagnostic(`${opened} of ${ABORTING} aborting clients connected`);
  assert.equal(opened, ABORTING);

  // the ones that were waiting for the slow Redis are answered and dropped
  await sleep(1500);
  const [pong, pl, slowOk] = await Promise.all([
    get(B, '/ping'),
    post(B, '/pipeline', [['SET', 'load:abort:after', 'ok'], ['GET', 'load:abort:after']]),
    get(S, '/echo/still-here'),
  ]);
  assert.deepEqual(pong.json, { result: 'PONG' });
  assert.deepEqual(pl.json, [{ result: 'OK' }, { result: 'ok' }]);
  assert.deepEqual(slowOk.json, { result: 'still-here' });
  assert.ok(await untilOk(async () => (await redisClients(steady)) <= WORKERS * POOL),
    `Redis connections: ${await redisClients(steady)}`);
  const rss1 = workers.map(rssKb);
  t.diagnostic(`worker RSS kB before ${rss0.join(', ')}, after ${rss1.join(', ')}`);
  assertHealthy(nginx, from);
});

test('slow-loris bodies: dribbling ones finish, stalled ones time out, others are served meanwhile', async (t) => {
  const from = nginx.errorLog().length;
  const port = nginx.ports[LORIS];
  const key = `load:loris:${randomBytes(4).toString('hex')}`;
  const body = JSON.stringify(['INCR', key]);
  const DRIBBLERS = 200;
  const STALLERS = 100;
  // one byte every 100 ms: never a gap of client_body_timeout (1s)
  const step = Math.max(20, Math.min(200, Math.floor(PHASE_MS / body.length)));

  // resolves what the socket received; null if nginx never closed it
  const open = (onConnect) => new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    let got = '';
    let gaveUp = false;
    s.on('data', (d) => { got += d.toString('latin1'); });
    s.on('close', () => resolve(gaveUp ? null : got));
    s.on('error', () => { /* close follows */ });
    s.on('connect', () => onConnect(s));
    s.setTimeout(PHASE_MS + 10000, () => { gaveUp = true; s.destroy(); });
  });
  const head = `POST /redis/${B} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
               `Connection: close\r\nContent-Length: ${body.length}\r\n\r\n`;

  const dribblers = Array.from({ length: DRIBBLERS }, () => open((s) => {
    s.write(head);
    let i = 0;
    const tick = setInterval(() => {
      if (s.destroyed) { clearInterval(tick); return; }
      s.write(body[i++]);
      if (i === body.length) clearInterval(tick);
    }, step);
  }));
  const stallers = Array.from({ length: STALLERS }, () => open((s) => s.write(head + body.slice(0, 3))));

  // meanwhile, everyone else
  const stats = await hammer({
    ms: Math.min(PHASE_MS, step * body.length),
    clients: 8,
    send: (w) => request({ port, path: `/redis/${B}/incr/load:loris:other:${w}` }),
    check: (r) => (r.status === 200 ? null : 'status'),
  });
  t.diagnostic(summary('beside slow-loris clients', stats));
  assert.deepEqual(stats.wrong, []);
  assert.deepEqual(stats.errors, {});
  assert.ok(stats.total > 0);

  const dribbled = await Promise.all(dribblers);
  const stalled = await Promise.all(stallers);
  const ok = dribbled.filter((a) => /^HTTP\/1\.1 200 /.test(a) && /\r\n\r\n\{"result":\d+\}$/.test(a)).length;
  assert.equal(ok, DRIBBLERS, `dribbled bodies answered 200: ${dribbled.find((a) => !/^HTTP\/1\.1 200 /.test(a))}`);
  assert.deepEqual((await get(B, `/get/${key}`)).json, { result: String(DRIBBLERS) });
  // nginx ends a body that stalls past client_body_timeout: 408 in the
  // access log, the connection closed without an answer
  assert.ok(stalled.every((a) => a === ''), `stalled: ${JSON.stringify(stalled.filter((a) => a !== '').slice(0, 3))}`);
  const timedOut = nginx.read('access.log').split('\n')
    .filter((l) => l.includes(`"POST /redis/${B} HTTP/1.1" 408 `)).length;
  t.diagnostic(`${STALLERS} stalled bodies: ${timedOut} logged 408`);
  assert.equal(timedOut, STALLERS);
  assertHealthy(nginx, from);
});

test('PostgreSQL SIGKILLed and restarted under load: cached keys keep working, then everything recovers', async (t) => {
  const org = (await pg.admin('org', 'create', 'load', '--plan', 'unlimited')).organization_id;
  const inst = (await pg.admin('instance', 'create', 'load', 'main', `127.0.0.1:${steady.port}`, '--db', '4')).instance_id;
  const warm = (await pg.admin('key', 'create', 'load', 'warm')).token;
  // keys nobody has used yet: each is a key store lookup when first used
  const cold = (await pg.rows(`
    select k.token from generate_series(1, 3000) g,
           lateral redisgate.create_key(:'org'::uuid, 'cold-' || g, '{read}') k`,
  { vars: { org } })).map(([tok]) => tok);
  assert.match(org, /^[0-9a-f-]{36}$/);
  pgNginx = await startNginx({
    workers: WORKERS,
    logLevel: 'info',
    http: [
      `redisgate_pg "${pg.conninfo('application_name=rg-load')}";`,
      'redisgate_pg_timeout 1s;',
      'redisgate_cache zone=load_keys:1m ttl=1s stale=120s;',
    ].join('\n'),
  });
  const call = (tok, rest) => request({ port: pgNginx.port, path: `/redis/${inst}${rest}`, headers: { Authorization: `Bearer ${tok}` } });
  assert.ok(await untilOk(async () => (await call(warm, '/ping')).status === 200), 'warm key works');
  // both workers have it cached
  for (let i = 0; i < 20; i++) assert.equal((await call(warm, '/ping')).status, 200);

  const pidFile = path.join(pg.dir, 'data', 'postmaster.pid');
  const postmaster = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  const faults = (async () => {
    await sleep(PHASE_MS * 0.2);
    process.kill(postmaster, 'SIGKILL');
    // what an operator's restart does after a crash: where process 1 does
    // not reap orphans (containers), the dead postmaster stays a zombie
    // that its own lock file would take for a live server
    await sleep(200);
    rmSync(pidFile, { force: true });
    for (const f of readdirSync(path.join(pg.dir, 'run'))) {
      if (f.endsWith('.lock')) rmSync(path.join(pg.dir, 'run', f), { force: true });
    }
    await sleep(PHASE_MS * 0.4);
    await pg.start();
  })();
  const stats = { warm: null, cold: null };
  let nextCold = 0;
  [stats.warm, stats.cold] = await Promise.all([
    hammer({
      ms: PHASE_MS,
      clients: CLIENTS / 2,
      send: (w) => call(warm, `/incr/load:pg:${w}`),
      check: (r) => (r.status === 200 && Number.isInteger(r.json?.result) ? null : 'warm key refused'),
    }),
    hammer({
      ms: PHASE_MS,
      clients: 4,
      send: () => call(cold[nextCold++ % cold.length], '/ping'),
      check: (r) => {
        if (r.status === 200) return r.json?.result === 'PONG' ? null : 'answer';
        return r.status === 500 && r.json?.error === 'key store unavailable' ? null : 'status';
      },
    }),
  ]);
  await faults;
  t.diagnostic(summary('PostgreSQL kill, cached key', stats.warm));
  t.diagnostic(summary(`PostgreSQL kill, ${nextCold} uncached keys`, stats.cold));
  assert.deepEqual(stats.warm.wrong, [], JSON.stringify(stats.warm.wrong));
  assert.deepEqual(stats.warm.errors, {});
  assert.deepEqual(stats.cold.wrong, []);
  assert.deepEqual(stats.cold.errors, {});
  assert.ok(stats.cold.status[500] > 0, 'the uncached key failed while PostgreSQL was down');

  // a key created after the restart works: lookups reconnected
  const fresh = (await pg.admin('key', 'create', 'load', 'fresh')).token;
  assert.ok(await untilOk(async () => (await call(fresh, '/ping')).status === 200, 100, 100),
    'lookups work again after the restart');
  // each worker's lookups back off on their own (up to 5 s): both recover
  const other = cold[nextCold++ % cold.length];
  assert.ok(await untilOk(async () => (await call(other, '/ping')).status === 200, 100, 100),
    'an unused key works again too');
  assertHealthy(pgNginx);
});

test('the key store queue is bounded: past 1024 lookups a worker answers 500 "overloaded" at once', async (t) => {
  await pg.admin('org', 'create', 'queue', '--plan', 'unlimited');
  const inst = (await pg.admin('instance', 'create', 'queue', 'main', `127.0.0.1:${steady.port}`, '--db', '4')).instance_id;
  const valid = (await pg.admin('key', 'create', 'queue', 'main')).token;
  const LOCK = 4242;
  // one connection, and a lookup that waits while this test holds a lock
  const ng = await startNginx({
    workers: 1,
    workerConnections: 4096,
    logLevel: 'info',
    http: [
      `redisgate_pg "${pg.conninfo('application_name=rg-queue')}" connections=1;`,
      'redisgate_pg_timeout 20s;',
      'redisgate_cache zone=queue_keys:1m;',
      // (an argument, so that the lock is taken even when no row matches)
      'redisgate_pg_query "SELECT * FROM redisgate.lookup(CASE WHEN ' +
        `pg_advisory_xact_lock_shared(${LOCK}) IS NULL THEN NULL ELSE $1 END, $2::uuid)";`,
    ].join('\n'),
  });
  try {
    // held until released below (at most 30 s)
    const held = pg.sql(`select pg_advisory_lock(${LOCK}); select pg_sleep(30);`, { timeoutMs: 60000 })
      .catch(() => { /* terminated: that is the release */ });
    assert.ok(await untilOk(async () => Number(await pg.sql(
      `select count(*) from pg_locks where locktype = 'advisory' and objid = ${LOCK} and granted`)) === 1, 50, 50),
    'the lock is held');

    const N = 1100;
    const t0 = Date.now();
    let early = 0;
    const pending = Array.from({ length: N }, () => request({
      port: ng.port,
      path: `/redis/${inst}/ping`,
      headers: { Authorization: `Bearer rg_${randomBytes(32).toString('hex')}` },
    }).then((r) => { early++; return r; }, (e) => ({ status: e.code || 'error', text: '' })));
    // what does not fit is refused at once; then the key store goes on
    await untilOk(async () => early >= N - 1024, 200, 100);
    await sleep(200);
    const answeredEarly = early;
    await pg.sql(`select pg_terminate_backend(pid) from pg_locks
                   where locktype = 'advisory' and objid = ${LOCK} and mode = 'ExclusiveLock'`);
    await held;
    const answers = await Promise.all(pending);

    const count = (pred) => answers.filter(pred).length;
    const overloaded = count((r) => r.status === 500 && r.json?.error === 'key store is overloaded');
    const unknown = count((r) => r.status === 401 && r.json?.error === 'Unauthorized: invalid API key');
    t.diagnostic(`${N} lookups at once: ${overloaded} overloaded, ${unknown} answered 401 once the key store went on (${Date.now() - t0} ms)`);
    assert.equal(answeredEarly, N - 1024, 'only the refused ones were answered while the lookups waited');
    assert.equal(overloaded, N - 1024, 'exactly what did not fit in the queue');
    assert.equal(unknown, 1024);
    assert.deepEqual((await request({ port: ng.port, path: `/redis/${inst}/ping`, headers: { Authorization: `Bearer ${valid}` } })).json,
      { result: 'PONG' });
    assertHealthy(ng);
  } finally {
    await ng.stop();
  }
});
