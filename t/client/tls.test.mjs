// Redis and PostgreSQL over TLS, with plain fetch(): certificates nginx must
// refuse (one fixed JSON 500 and one error-log line each), a TLS Redis
// SIGKILLed and restarted under load, the key store on a PostgreSQL with
// ssl = on (sslmode=verify-full), and a key-store instance on rediss://.
// Sentinel over TLS (rediss-sentinel://): a primary and a replica and one
// sentinel (quorum 1), all speaking only TLS, to each other too; a forced
// failover; the sentinel's certificate from another CA.
// The @upstash/redis suite over TLS is upstash.test.mjs with
// REDISGATE_TLS=1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  startRedisTls, startSentinel, startNginx, startPg, newToken, randomUUID, rg,
  assertCleanErrorLog, significantLogLines, killTwiceUnderLoad, summary, untilOk,
  trustTestCa, testCerts, stopAll, redisCommands,
} from './harness.mjs';

const SECONDS = Number(process.env.FAULT_SECONDS || 3);
const REQ_MS = 10000;              // bound of every single request
const UNVERIFIED = 'Redis unavailable: TLS certificate verification failed';
// what a request may get while its Redis is killed and started again (in
// the middle of a handshake too)
const DOWN = ['Redis unavailable: could not connect', 'Redis unavailable: connection lost',
  'Redis unavailable: TLS handshake failed'];

let steady;      // TLS Redis, server.crt
let flaky;       // TLS Redis, server.crt: killed and started again
let expired;     // TLS Redis, expired.crt
let wrongname;   // TLS Redis, wrongname.crt (DNS:other.example only)
let nginx;       // trusts the test CA
let otherCa;     // trusts other-ca.crt only
let pg;          // the key store, ssl = on
let tp0;         // TLS primary (at first) and replica, tls-replication yes
let tp1;
let tsentinel;   // a sentinel speaking only TLS, watching them as mymaster (quorum 1)

const S = randomUUID();            // -> steady
const F = randomUUID();            // -> flaky
const E = randomUUID();            // -> expired
const W = randomUUID();            // -> wrongname
const TS = randomUUID();           // rediss-sentinel://<tsentinel>/mymaster/2
const TS_PLAIN = randomUUID();     // redis-sentinel://<tsentinel>/mymaster: plain TCP to it
const NO_SENTINEL = 'Redis unavailable: no sentinel knows the primary';
const token = newToken();

before(async () => {
  [steady, flaky, expired, wrongname, pg, tp0] = await Promise.all([
    startRedisTls(), startRedisTls(), startRedisTls([], { cert: 'expired' }),
    startRedisTls([], { cert: 'wrongname' }), startPg({ tls: true }),
    startRedisTls(['--tls-replication', 'yes', '--repl-diskless-sync-delay', '0']),
  ]);
  tp1 = await startRedisTls(['--tls-replication', 'yes', '--repl-diskless-sync-delay', '0',
    '--replicaof', '127.0.0.1', String(tp0.port)]);
  tsentinel = await startSentinel({
    masterPort: tp0.port, quorum: 1, downAfterMs: 2000, failoverTimeoutMs: 3000, tls: true,
  });
  const common = {
    instances: [
      { uuid: S, url: steady.url }, { uuid: F, url: flaky.url },
      { uuid: E, url: expired.url }, { uuid: W, url: wrongname.url },
      { uuid: TS, url: `rediss-sentinel://${tsentinel.address}/mymaster/2` },
      { uuid: TS_PLAIN, url: `redis-sentinel://${tsentinel.address}/mymaster` },
    ],
    keys: [{ token, id: 'tls' }],
    workers: 2,
    logLevel: 'info',
  };
  [nginx, otherCa] = await Promise.all([
    startNginx({
      ...common,
      http: [
        trustTestCa(),
        'redisgate_timeout 5s;',
        'redisgate_connect_timeout 1s;',
        'redisgate_reconnect_backoff 50ms 200ms;',
      ].join('\n'),
    }),
    startNginx({
      ...common,
      http: `redisgate_ssl_trusted_certificate ${testCerts().file('other-ca.crt')};`,
    }),
  ]);
});

after(async () => {
  try {
    await stopAll(otherCa);
  } finally {
    await stopAll(nginx, steady, flaky, expired, wrongname, pg, tsentinel, tp0, tp1);
  }
});

const call = (ng, id, rest, init = {}) => rg(ng, id, token, rest, { timeoutMs: REQ_MS, ...init });

test('expired, for another name, from another CA: one JSON 500 with a fixed message and one error-log line each', async () => {
  for (const [name, ng, id, why] of [
    ['expired', nginx, E, /\(10: certificate has expired\)/],
    ['another name', nginx, W, /does not match "127\.0\.0\.1"/],
    ['another CA', otherCa, S, /\((19|20|21): [^)]+\)/],
  ]) {
    const from = ng.errorLog().length;
    const r = await call(ng, id, '/ping');
    assert.equal(r.status, 500, `${name}: ${r.text}`);
    assert.match(r.headers.get('content-type'), /application\/json/);
    assert.deepEqual(r.json, { error: UNVERIFIED }, name);
    const lines = significantLogLines(ng.errorLog().slice(from));
    assertCleanErrorLog(lines.join('\n'));
    assert.equal(lines.length, 1, `${name}: one line in error.log:\n${lines.join('\n')}`);
    assert.match(lines[0], /\[error\].*TLS certificate .*Redis at rediss:\/\/127\.0\.0\.1:\d+\/0: /, name);
    assert.match(lines[0], why, name);
  }
  // the same servers, trusted: TLS itself works
  assert.deepEqual((await call(nginx, S, '/ping')).json, { result: 'PONG' });
  assert.ok(nginx.running && otherCa.running);
});

test('a TLS Redis SIGKILLed and restarted twice under load: 200 or a fixed 500, then everything 200', async (t) => {
  const from = nginx.errorLog().length;
  const stats = await killTwiceUnderLoad({
    redis: flaky,
    ms: SECONDS * 1000,
    clients: 16,
    key: 'tls:kill',
    get: (rest) => call(nginx, F, rest),
    post: (rest, json) => call(nginx, F, rest, { method: 'POST', body: JSON.stringify(json) }),
    down: DOWN,
  });
  t.diagnostic(summary('TLS Redis killed twice', stats));
  assert.deepEqual(stats.wrong, []);
  assert.deepEqual(stats.errors, {}, 'every request got an HTTP answer');
  assert.ok(stats.status[200] > 0 && stats.status[500] > 0, 'both served and failed requests');

  assert.ok(await untilOk(async () => (await call(nginx, F, '/ping')).status === 200), 'recovered');
  const key = `tls:after:${randomBytes(4).toString('hex')}`;
  const rs = await Promise.all(Array.from({ length: 40 }, () => call(nginx, F, `/incr/${key}`)));
  assert.deepEqual(rs.map((r) => r.status), Array(40).fill(200));
  assert.deepEqual(rs.map((r) => r.json.result).sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i + 1));
  assert.equal(await flaky.command(`GET ${key}`), '$2');
  assert.ok(nginx.running);
  const log = nginx.errorLog().slice(from);
  assertCleanErrorLog(log);
  assert.ok(!/worker process \d+ exited/.test(log), 'no worker exited');
});

// an organization with an instance at `address` (default: the TLS Redis,
// rediss://) and a key, in the key store, and an nginx whose redisgate_pg
// conninfo ends in `conninfo`; resolves { ng, inst, key }
async function keyStoreNginx(org, conninfo, address = `rediss://127.0.0.1:${steady.port}`, ...opts) {
  await pg.admin('org', 'create', org);
  const inst = (await pg.admin('instance', 'create', org, 'cache', address, ...opts)).instance_id;
  const key = (await pg.admin('key', 'create', org, 'app')).token;
  const ng = await startNginx({
    http: [
      `redisgate_pg "${pg.conninfo(conninfo)}";`,
      'redisgate_pg_timeout 2s;',
      `redisgate_cache zone=${org}:1m;`,
      trustTestCa(),
    ].join('\n'),
  });
  return { ng, inst, key };
}

test('the key store over TLS (sslmode=verify-full): its key serves a rediss:// instance', async () => {
  const ca = testCerts().file('ca.crt');
  const { ng, inst, key } = await keyStoreNginx('tls_org',
    `sslmode=verify-full sslrootcert=${ca} application_name=rg-tls`);
  try {
    const set = await rg(ng, inst, key, '/set/tls:ks/from-keystore', { timeoutMs: REQ_MS });
    assert.equal(set.status, 200, set.text);
    assert.deepEqual(set.json, { result: 'OK' });
    assert.deepEqual((await rg(ng, inst, key, '/get/tls:ks', { timeoutMs: REQ_MS })).json,
      { result: 'from-keystore' });
    // in the TLS Redis, database 0
    assert.equal(await steady.command('STRLEN tls:ks'), ':13');
    // the module's own connection to PostgreSQL is encrypted
    assert.equal(await pg.sql(`select count(*) > 0 from pg_stat_ssl s
                                 join pg_stat_activity a using (pid)
                                where a.application_name = 'rg-tls' and s.ssl`), 't');
  } finally {
    await stopAll(ng);
  }
});

test('the key store with sslrootcert of another CA: 500 "key store unavailable", libpq\'s reason in the log', async () => {
  const other = testCerts().file('other-ca.crt');
  const { ng, inst, key } = await keyStoreNginx('tls_org2', `sslmode=verify-full sslrootcert=${other}`);
  try {
    const r = await rg(ng, inst, key, '/ping', { timeoutMs: REQ_MS });
    assert.equal(r.status, 500, r.text);
    assert.deepEqual(r.json, { error: 'key store unavailable' });
    const lines = significantLogLines(ng.errorLog());
    assert.ok(lines.some((l) => /certificate verify failed/.test(l)),
      `libpq's reason in error.log:\n${lines.join('\n')}`);
  } finally {
    await stopAll(ng);
  }
});

// ---------------------------------------------------------------------------
// Sentinel over TLS

// GET key in database db of a TLS Redis
async function tlsGet(srv, key, db) {
  return (await redisCommands(srv.port, [['SELECT', String(db)], ['GET', key]],
    { tlsOptions: srv.tlsOptions() }))[1];
}

// the sentinel sees `replica` as a healthy replica, and names `primary`
async function tlsSentinelReady(primary, replica) {
  const [ip, port] = await tsentinel.call(['SENTINEL', 'get-master-addr-by-name', 'mymaster']);
  if (ip !== '127.0.0.1' || Number(port) !== primary.port) return false;
  const replicas = await tsentinel.call(['SENTINEL', 'replicas', 'mymaster']);
  return replicas.some((r) => {
    const f = Object.fromEntries(r.flatMap((v, i) => (i % 2 ? [] : [[v, r[i + 1]]])));
    return f.port === String(replica.port) && f.flags === 'slave' && f['master-link-status'] === 'ok';
  });
}

test('rediss-sentinel://: the sentinel and the primary over TLS; a forced failover is followed', async () => {
  const from = nginx.errorLog().length;
  assert.ok(await untilOk(() => tlsSentinelReady(tp0, tp1), 200, 50),
    `the TLS sentinel sees the TLS replica:\n${tsentinel.log().slice(-2000)}`);
  const v = `ts-${randomBytes(4).toString('hex')}`;
  const set = await call(nginx, TS, `/set/tls:sentinel/${v}`);
  assert.equal(set.status, 200, set.text);
  assert.deepEqual(set.json, { result: 'OK' });
  assert.deepEqual((await call(nginx, TS, '/get/tls:sentinel')).json, { result: v });
  assert.equal(await tlsGet(tp0, 'tls:sentinel', 2), v, 'in database 2 of the primary');

  // the sentinel promotes the replica: writes follow (+switch-master on the
  // TLS link, or the ROLE check of a new connection)
  assert.equal(await tsentinel.call(['SENTINEL', 'FAILOVER', 'mymaster']), 'OK');
  assert.ok(await untilOk(async () => (await tsentinel.call(['SENTINEL', 'get-master-addr-by-name', 'mymaster']))[1]
    === String(tp1.port), 200, 50), 'the sentinel names the replica');
  let r;
  const w = `after-${v}`;
  assert.ok(await untilOk(async () => {
    r = await call(nginx, TS, `/set/tls:sentinel/${w}`);
    return r.status === 200 && (await tlsGet(tp1, 'tls:sentinel', 2)) === w;
  }, 100, 50), `writes reach the new primary: ${r?.status} ${r?.text}`);
  assert.equal((await tp1.call(['ROLE']))[0], 'master');
  // the subscription over TLS heard it
  const moved = new RegExp(`redisgate: sentinel 127\\.0\\.0\\.1:${tsentinel.port} says the primary "mymaster" moved to 127\\.0\\.0\\.1:${tp1.port}`);
  assert.ok(await untilOk(async () => moved.test(nginx.errorLog().slice(from)), 50, 50),
    `+switch-master in error.log:\n${significantLogLines(nginx.errorLog().slice(from)).join('\n')}`);
  assertCleanErrorLog(nginx.errorLog().slice(from));
});

test('rediss-sentinel://: the sentinel\'s certificate from another CA, or plain TCP to it: 500 "no sentinel knows the primary"', async () => {
  for (const [name, ng, id, why] of [
    ['another CA', otherCa, TS, /redisgate: TLS certificate verification failed for .*sentinel 127\.0\.0\.1:\d+.*\((19|20|21): [^)]+\)/],
    ['plain TCP', nginx, TS_PLAIN, /redisgate: .*sentinel 127\.0\.0\.1:\d+/],
  ]) {
    const from = ng.errorLog().length;
    const r = await call(ng, id, '/get/tls:sentinel');
    assert.equal(r.status, 500, `${name}: ${r.text}`);
    assert.deepEqual(r.json, { error: NO_SENTINEL }, name);
    const lines = significantLogLines(ng.errorLog().slice(from));
    assert.ok(lines.some((l) => why.test(l)), `${name}: ${why} in error.log:\n${lines.join('\n')}`);
    assert.ok(lines.some((l) => /no sentinel of redis(s)?-sentinel:\/\/127\.0\.0\.1:\d+\/mymaster\/\d+ named the primary "mymaster"/.test(l)),
      `${name}: the round's line in error.log:\n${lines.join('\n')}`);
    assertCleanErrorLog(lines.join('\n'));
  }
});

test('the key store\'s rediss-sentinel:// address: served over TLS, in the instance\'s database', async () => {
  const [, port] = await tsentinel.call(['SENTINEL', 'get-master-addr-by-name', 'mymaster']);
  const primary = [tp0, tp1].find((s) => s.port === Number(port));
  const { ng, inst, key } = await keyStoreNginx('tls_sentinel', 'application_name=rg-tls-sentinel',
    `rediss-sentinel://${tsentinel.address}/mymaster`, '--db', '4');
  try {
    const set = await rg(ng, inst, key, '/set/tls:ks:sentinel/1', { timeoutMs: REQ_MS });
    assert.equal(set.status, 200, set.text);
    assert.deepEqual(set.json, { result: 'OK' });
    assert.equal(await tlsGet(primary, 'tls:ks:sentinel', 4), '1', 'in database 4 of the primary');
  } finally {
    await stopAll(ng);
  }
});
