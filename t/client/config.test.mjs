// Configuration that nginx -t must refuse, with a message that says why and
// never echoes a secret: Redis URLs, clear-text keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nginxTest, sha256Hex, randomUUID, testCerts } from './harness.mjs';

const ID = randomUUID();

const instance = (url) => nginxTest([`redisgate_instance ${ID} ${url};`]);

test('valid Redis URLs pass nginx -t', async () => {
  for (const url of [
    'redis://127.0.0.1:6379/0',
    'redis://127.0.0.1',
    'redis://[::1]:6380/15',
    'redis://:p%40ss@127.0.0.1:6379/2',
    'redis://user:p@ss@127.0.0.1/1',         // the last '@' ends the password
    'unix:///run/redis/redis.sock',
    'unix://:secret@/run/redis/redis.sock?db=3',
    'unix://secret@/run/redis/redis.sock',    // a password, no user name
    'unix:///run/redis@main.sock',             // '@' in the socket path
    'unix://u:p@ss@/run/redis@main.sock?db=1', // ... and in the password
    'redis://127.0.0.1/2147483647',
    'rediss://127.0.0.1:6380/0',
    'rediss://127.0.0.1',
    'rediss://[::1]:6380/15',
    'rediss://user:p%40ss@localhost:6380/4',
    'redis-sentinel://127.0.0.1:26379/mymaster',
    'redis-sentinel://127.0.0.1:26379,127.0.0.2,[::1]:26380/mymaster/3',
    'redis-sentinel://localhost:26379/main',     // names resolved at load
    'redis-sentinel://:p%40ss@127.0.0.1/main?sentinel_password=s%40p',
    'rediss-sentinel://u:p@127.0.0.1:26380/main/1?sentinel_user=su&sentinel_password=sp',
  ]) {
    const r = await instance(url);
    assert.equal(r.code, 0, `${url}: ${r.out}`);
    assert.match(r.out, /test is successful/);
  }
});

test('invalid Redis URLs are refused, each with its reason', async () => {
  const cases = [
    ['http://127.0.0.1:6379', /expected redis:\/\/, rediss:\/\/, unix:\/\/, redis-sentinel:\/\/ or redis-cluster:\/\/: "http:\/\/127\.0\.0\.1:6379"/],
    ['redis://', /expected redis:\/\/, rediss:\/\/, unix:\/\/, redis-sentinel:\/\/ or redis-cluster:\/\//],
    ['rediss://', /expected redis:\/\/, rediss:\/\/, unix:\/\/, redis-sentinel:\/\/ or redis-cluster:\/\//],
    ['redis-sentinel://', /expected redis:\/\/, rediss:\/\/, unix:\/\/, redis-sentinel:\/\/ or redis-cluster:\/\//],
    ['redis-sentinel://127.0.0.1:26379', /a sentinel URL names the primary/],
    ['redis-sentinel://127.0.0.1:26379/', /a sentinel URL names the primary/],
    ['rediss-sentinel://127.0.0.1:26379//0', /a sentinel URL names the primary/],
    ['redis-sentinel:///main', /an empty host in the list/],
    ['redis-sentinel://127.0.0.1,/main', /an empty host in the list/],
    ['redis-sentinel://127.0.0.1/main/', /an empty database number/],
    ['redis-sentinel://127.0.0.1/main/x', /the database number must be 0 to 2147483647/],
    ['redis-sentinel://127.0.0.1/main?db=2', /takes only \?sentinel_user=\.\.\.&sentinel_password=\.\.\./],
    ['redis-sentinel://127.0.0.1:99999/main', /a host is not host\[:port\] or not found in Redis URL "127\.0\.0\.1:99999"/],
    ['redis-sentinel://unix:/main', /a host is not host\[:port\] or not found/],
    ['rediss:///3', /invalid Redis URL: no host/],
    ['rediss://127.0.0.1/x', /the database number must be 0 to 2147483647/],
    ['rediss://127.0.0.1:99999', /invalid port in Redis URL "127\.0\.0\.1:99999"/],
    ['redis:///3', /invalid Redis URL: no host/],
    ['redis://127.0.0.1/x', /invalid Redis URL: the database number must be 0 to 2147483647/],
    ['redis://127.0.0.1/-1', /the database number must be 0 to 2147483647/],
    ['redis://127.0.0.1/2147483648', /the database number must be 0 to 2147483647/],
    ['redis://127.0.0.1/4294967300', /the database number must be 0 to 2147483647/],
    ['redis://127.0.0.1/99999999999999999999999', /the database number must be 0 to 2147483647/],
    ['redis://127.0.0.1:99999', /invalid port in Redis URL "127\.0\.0\.1:99999"/],
    ['unix://redis.sock', /invalid Redis URL: the unix socket path must be absolute/],
    ['unix:///run/redis.sock?database=1', /a unix socket URL takes only \?db=N/],
    ['unix:///run/redis.sock?db=', /a unix socket URL takes only \?db=N/],
    ['unix:///run/redis.sock?db=1x', /the database number must be 0 to 2147483647/],
  ];
  for (const [url, why] of cases) {
    const r = await instance(url);
    assert.notEqual(r.code, 0, `${url} passed nginx -t`);
    assert.match(r.out, /\[emerg\]/, url);
    assert.match(r.out, why, `${url}: ${r.out}`);
  }
});

test('a refused URL with credentials is not echoed', async () => {
  const password = 'hunter2-' + sha256Hex(ID).slice(0, 12);
  for (const url of [
    `rediss://:${password}@127.0.0.1/notadb`,
    `redis://:${password}@127.0.0.1/notadb`,
    `unix://:${password}@relative.sock`,
    `redis://:${password}%zz@127.0.0.1`,
    `redis-sentinel://127.0.0.1/main?sentinel_password=${password}&x=1`,
    `redis-sentinel://127.0.0.1:99999/main?sentinel_password=${password}`,
    `redis-sentinel://:${password}@127.0.0.1/main/x`,
  ]) {
    const r = await instance(url);
    assert.notEqual(r.code, 0, url);
    assert.match(r.out, /\[emerg\]/, url);
    assert.ok(!r.out.includes(password), `password echoed: ${r.out}`);
  }
  const bad = await instance(`redis://:${password}%zz@127.0.0.1`);
  assert.match(bad.out, /malformed percent-encoding in Redis URL credentials/);
});

test('the TLS directives pass nginx -t, at http level', async () => {
  const c = testCerts();
  const r = await nginxTest([
    `redisgate_instance ${ID} rediss://127.0.0.1:6380/1;`,
    `redisgate_ssl_trusted_certificate ${c.file('ca.crt')};`,
    'redisgate_ssl_verify on;',
    'redisgate_ssl_verify_depth 2;',
    'redisgate_ssl_server_name on;',
    'redisgate_ssl_name redis.internal;',
    `redisgate_ssl_certificate ${c.file('client.crt')};`,
    `redisgate_ssl_certificate_key ${c.file('client.key')};`,
    'redisgate_ssl_protocols TLSv1.2 TLSv1.3;',
    'redisgate_ssl_ciphers HIGH:!aNULL;',
    'redisgate_ssl_session_reuse off;',
  ]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /test is successful/);
});

test('TLS directives with bad values are refused', async () => {
  const c = testCerts();
  const tlsInstance = `redisgate_instance ${ID} rediss://127.0.0.1:6380/1;`;
  for (const [line, why] of [
    ['redisgate_ssl_verify maybe;', /invalid value "maybe"/],
    ['redisgate_ssl_session_reuse 1;', /invalid value "1"/],
    ['redisgate_ssl_protocols TLSv9;', /invalid value "TLSv9"/],
    ['redisgate_ssl_verify_depth deep;', /invalid value|invalid number/],
    [`redisgate_ssl_trusted_certificate ${c.file('no-such-ca.crt')};`, /no-such-ca\.crt/],
    [`redisgate_ssl_certificate ${c.file('no-such.crt')};\n  redisgate_ssl_certificate_key ${c.file('client.key')};`,
      /no-such\.crt/],
  ]) {
    const r = await nginxTest([tlsInstance, ...line.split('\n  ')]);
    assert.notEqual(r.code, 0, `${line} passed nginx -t`);
    assert.match(r.out, /\[emerg\]/, line);
    assert.match(r.out, why, `${line}: ${r.out}`);
  }
});

test('redisgate_key takes only a SHA-256, and never echoes what it got', async () => {
  const token = 'rg_' + sha256Hex(ID);          // a token pasted by mistake
  for (const arg of [token, `sha256:${token}`, `sha256:${sha256Hex(token).slice(1)}`]) {
    const r = await nginxTest([`redisgate_key ${arg};`]);
    assert.notEqual(r.code, 0, arg);
    assert.match(r.out, /key is not "sha256:<64 hex digits>": keys are configured by the SHA-256 of the token, never the token itself/);
    assert.ok(!r.out.includes(token) && !r.out.includes(arg), r.out);
  }
  const nothex = await nginxTest([`redisgate_key sha256:${'g'.repeat(64)};`]);
  assert.notEqual(nothex.code, 0);
  assert.match(nothex.out, /invalid hex digits in key hash/);

  const hash = sha256Hex(token);
  const twice = await nginxTest([
    `redisgate_key sha256:${hash} id=one;`,
    `redisgate_key sha256:${hash.toUpperCase()} id=two;`,
  ]);
  assert.notEqual(twice.code, 0);
  assert.match(twice.out, /key "(one|two)" has the same hash as key "(one|two)"/);

  const ok = await nginxTest([`redisgate_key sha256:${hash} id=one scopes=read;`]);
  assert.equal(ok.code, 0, ok.out);
});
