// Redis and PostgreSQL over TLS, with plain fetch(): certificates nginx must
// refuse (one fixed JSON 500 and one error-log line each), a TLS Redis
// SIGKILLed and restarted under load, the key store on a PostgreSQL with
// ssl = on (sslmode=verify-full), and a key-store instance on rediss://.
// The @upstash/redis suite over TLS is upstash.test.mjs with
// REDISGATE_TLS=1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  startRedisTls, startNginx, startPg, newToken, randomUUID, rg,
  assertCleanErrorLog, significantLogLines, killTwiceUnderLoad, summary, untilOk,
  trustTestCa, testCerts, stopAll,
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

const S = randomUUID();            // -> steady
const F = randomUUID();            // -> flaky
const E = randomUUID();            // -> expired
const W = randomUUID();            // -> wrongname
const token = newToken();

before(async () => {
  [steady, flaky, expired, wrongname, pg] = await Promise.all([
    startRedisTls(), startRedisTls(), startRedisTls([], { cert: 'expired' }),
    startRedisTls([], { cert: 'wrongname' }), startPg({ tls: true }),
  ]);
  const common = {
    instances: [
      { uuid: S, url: steady.url }, { uuid: F, url: flaky.url },
      { uuid: E, url: expired.url }, { uuid: W, url: wrongname.url },
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
    await stopAll(nginx, steady, flaky, expired, wrongname, pg);
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

// an organization with an instance on the TLS Redis (rediss://) and a key,
// in the key store, and an nginx whose redisgate_pg conninfo ends in
// `conninfo`; resolves { ng, inst, key }
async function keyStoreNginx(org, conninfo) {
  await pg.admin('org', 'create', org);
  const inst = (await pg.admin('instance', 'create', org, 'cache', `rediss://127.0.0.1:${steady.port}`)).instance_id;
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
