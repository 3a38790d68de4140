// The official @upstash/redis client, unchanged, against RedisGate.  With
// REDISGATE_TLS=1 (t/run-tests' second run of this file), its Redis speaks
// only TLS and the instance is rediss://.  With REDISGATE_CLUSTER=1 (the
// third run), the instance is a Redis Cluster of three primaries that this
// file starts (redis-cluster://, or rediss-cluster:// with both): every
// test runs unchanged, keys spread over the nodes.
import { spawnSync } from 'node:child_process';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from '@upstash/redis';
import {
  startRedis, startRedisTls, startCluster, startNginx, newToken, randomUUID, rg,
  stopAll, trustTestCa,
} from './harness.mjs';

const overTls = process.env.REDISGATE_TLS === '1';
const overCluster = process.env.REDISGATE_CLUSTER === '1';

let redisSrv;    // the Redis, or
let cluster;     // the cluster's nodes (REDISGATE_CLUSTER=1)
let nginx;
const instance = randomUUID();
const token = newToken();        // scopes read,write (default)
const roToken = newToken();      // scopes=read
let redis;       // one request per command (single-command route)
let raw;         // same, without automatic deserialization
let piped;       // auto-pipelining on (the client's default)

function client(tok, opts = {}) {
  return new Redis({
    url: nginx.url(instance),
    token: tok,
    enableAutoPipelining: false,
    retry: false,            // network errors fail the test instead of being retried
    enableTelemetry: false,
    signal: () => AbortSignal.timeout(10000),   // every request bounded in time
    ...opts,
  });
}

before(async () => {
  if (overCluster) {
    cluster = await startCluster({ primaries: 3, replicas: 0, tls: overTls });
  } else {
    redisSrv = overTls ? await startRedisTls() : await startRedis();
  }
  nginx = await startNginx({
    instances: [{ uuid: instance, url: overCluster ? cluster.url() : redisSrv.url }],
    keys: [
      { token, id: 'rw' },
      { token: roToken, id: 'ro', scopes: 'read' },
    ],
    http: ['redisgate_timeout 5s;', overTls ? trustTestCa() : ''].join('\n'),
  });
  redis = client(token);
  raw = client(token, { automaticDeserialization: false });
  piped = client(token, { enableAutoPipelining: true });
});

after(() => stopAll(nginx, redisSrv, cluster));

let n = 0;
const key = (name) => `t${++n}:${name}`;

test('seed snippet: set/get, hset/hgetall', async () => {
  assert.equal(await redis.set('key', 'value'), 'OK');
  assert.equal(await redis.get('key'), 'value');
  assert.equal(await redis.hset('hash', { field: 'value' }), 1);
  assert.deepEqual(await redis.hgetall('hash'), { field: 'value' });
});

test('strings: set/get/del/incr/append/strlen/expire/ttl', async () => {
  const k = key('s');
  assert.equal(await redis.set(k, 'hello', { ex: 100 }), 'OK');
  const ttl = await redis.ttl(k);
  assert.ok(ttl > 0 && ttl <= 100, `ttl ${ttl}`);
  assert.equal(await redis.get(k), 'hello');
  assert.equal(await redis.append(k, ' world'), 11);
  assert.equal(await redis.strlen(k), 11);
  assert.equal(await redis.get(k), 'hello world');
  assert.equal(await redis.persist(k), 1);
  assert.equal(await redis.ttl(k), -1);
  assert.equal(await redis.expire(k, 50), 1);
  const ttl2 = await redis.ttl(k);
  assert.ok(ttl2 > 0 && ttl2 <= 50, `ttl ${ttl2}`);
  assert.equal(await redis.set(k, 'other', { nx: true }), null, 'SET NX on existing key is nil');
  assert.equal(await redis.set(k, 'x', { xx: true, px: 100000 }), 'OK');
  assert.equal(await redis.del(k), 1);
  assert.equal(await redis.del(k), 0);
  assert.equal(await redis.exists(k), 0);
  assert.equal(await redis.ttl(k), -2);

  const c = key('counter');
  assert.equal(await redis.incr(c), 1);
  assert.equal(await redis.incrby(c, 41), 42);
  assert.equal(await redis.decr(c), 41);
  assert.equal(await redis.incrbyfloat(c, 0.5), 41.5);
});

test('numbers are auto-deserialized', async () => {
  const k = key('num');
  await redis.set(k, 42);
  assert.equal(await redis.get(k), 42);
  await redis.set(k, -3.25);
  assert.equal(await redis.get(k), -3.25);
  assert.equal(await raw.get(k), '-3.25');
  await redis.set(k, 1e21);
  assert.equal(await raw.get(k), '1e+21');
});

test('JSON values round-trip as objects', async () => {
  const k = key('json');
  const value = { name: 'Ada', tags: ['a', 'b'], nested: { n: 1, ok: true, nil: null }, 'quo"te': 'é' };
  assert.equal(await redis.set(k, value), 'OK');
  assert.deepEqual(await redis.get(k), value);
  assert.equal(await raw.get(k), JSON.stringify(value));
  const arr = [1, 'two', { three: 3 }];
  await redis.set(k, arr);
  assert.deepEqual(await redis.get(k), arr);
});

test('unicode and awkward strings round-trip exactly', async () => {
  const values = [
    'emoji 😀🎉👩‍👩‍👧',
    '中文字符 日本語 한국어',
    'quotes " and \' and backslash \\ and \\" escaped',
    'line1\nline2\r\n\ttabbed',
    'control \u0001\u0002\u001f and DEL \u007f',
    'nul \u0000 byte',
    '{"looks":"like json"}',
    '[1,2,3]',
    '12345',
    '-0.5',
    'true',
    'null',
    '',
    ' leading and trailing spaces ',
    'OK',
    'slash/es and %2F percent and ?query=1&x#hash',
    'x'.repeat(5000),
  ];
  for (const v of values) {
    const k = key('u');
    assert.equal(await raw.set(k, v), 'OK', `set ${JSON.stringify(v)}`);
    assert.equal(await raw.get(k), v, `base64 round-trip of ${JSON.stringify(v).slice(0, 60)}`);
    assert.equal(await raw.strlen(k), Buffer.byteLength(v), 'Redis stored the UTF-8 bytes');
    // the same value without Upstash-Encoding: plain JSON string escaping
    const r = await rg(nginx, instance, token, '', { method: 'POST', body: JSON.stringify(['GET', k]) });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { result: v }, `JSON round-trip of ${JSON.stringify(v).slice(0, 60)}`);
  }
  // JSON-looking strings come back deserialized with the default client
  const k = key('u');
  await raw.set(k, '{"looks":"like json"}');
  assert.deepEqual(await redis.get(k), { looks: 'like json' });
});

test('hashes', async () => {
  const k = key('h');
  assert.equal(await redis.hset(k, { name: 'john', age: 30, obj: { a: 1 } }), 3);
  assert.equal(await redis.hget(k, 'name'), 'john');
  assert.equal(await redis.hget(k, 'age'), 30);
  assert.deepEqual(await redis.hget(k, 'obj'), { a: 1 });
  assert.equal(await redis.hget(k, 'missing'), null);
  assert.deepEqual(await redis.hgetall(k), { name: 'john', age: 30, obj: { a: 1 } });
  assert.equal(await redis.hexists(k, 'name'), 1);
  assert.deepEqual((await redis.hkeys(k)).sort(), ['age', 'name', 'obj']);
  assert.equal(await redis.hlen(k), 3);
  assert.equal(await redis.hincrby(k, 'age', 2), 32);
  assert.deepEqual(await redis.hmget(k, 'name', 'nope'), { name: 'john', nope: null });
  assert.equal(await redis.hdel(k, 'obj', 'name'), 2);
  assert.deepEqual(await redis.hgetall(k), { age: 32 });
  assert.equal(await redis.hgetall(key('nohash')), null);
});

test('lists', async () => {
  const k = key('l');
  assert.equal(await redis.rpush(k, 'a', 'b', 'c'), 3);
  assert.equal(await redis.lpush(k, 'z'), 4);
  assert.deepEqual(await redis.lrange(k, 0, -1), ['z', 'a', 'b', 'c']);
  assert.equal(await redis.llen(k), 4);
  assert.equal(await redis.lpop(k), 'z');
  assert.equal(await redis.rpop(k), 'c');
  assert.equal(await redis.lindex(k, 1), 'b');
  assert.deepEqual(await redis.lpop(k, 5), ['a', 'b']);
  assert.equal(await redis.lpop(k), null);
  assert.deepEqual(await redis.lrange(k, 0, -1), []);
});

test('sets', async () => {
  const k = key('set');
  assert.equal(await redis.sadd(k, 'a', 'b', 'c'), 3);
  assert.equal(await redis.sadd(k, 'a'), 0);
  assert.deepEqual((await redis.smembers(k)).sort(), ['a', 'b', 'c']);
  assert.equal(await redis.sismember(k, 'b'), 1);
  assert.equal(await redis.sismember(k, 'q'), 0);
  assert.equal(await redis.scard(k), 3);
  assert.equal(await redis.srem(k, 'a', 'q'), 1);
  assert.deepEqual((await redis.smembers(k)).sort(), ['b', 'c']);
});

test('sorted sets', async () => {
  const k = key('z');
  assert.equal(await redis.zadd(k, { score: 1, member: 'one' }, { score: 2.5, member: 'two' }, { score: -1, member: 'neg' }), 3);
  assert.deepEqual(await redis.zrange(k, 0, -1), ['neg', 'one', 'two']);
  assert.deepEqual(await redis.zrange(k, 0, -1, { withScores: true }), ['neg', -1, 'one', 1, 'two', 2.5]);
  assert.equal(await redis.zscore(k, 'two'), 2.5);
  assert.equal(await redis.zscore(k, 'nobody'), null);
  assert.equal(await redis.zcard(k), 3);
  assert.equal(await redis.zincrby(k, 2, 'one'), 3);
  assert.equal(await redis.zrank(k, 'one'), 2);
  assert.deepEqual(await redis.zrange(k, 0, 10, { byScore: true }), ['two', 'one']);
  assert.equal(await redis.zrem(k, 'neg'), 1);
});

test('nil handling: missing keys', async () => {
  const a = key('present');
  await redis.set(a, 'here');
  assert.equal(await redis.get(key('missing')), null);
  assert.deepEqual(await redis.mget(a, key('missing'), a), ['here', null, 'here']);
  assert.deepEqual(await redis.mget([key('m1'), key('m2')]), [null, null]);
  const r = await rg(nginx, instance, token, `/get/${key('missing')}`);
  assert.equal(r.status, 200);
  assert.equal(r.text.replace(/\s/g, ''), '{"result":null}');
});

test('auto-pipelining: many concurrent commands all resolve correctly', async () => {
  const base = key('ap');
  const N = 150;
  const sets = await Promise.all(Array.from({ length: N }, (_, i) => piped.set(`${base}:${i}`, { i, s: `v${i}` })));
  assert.deepEqual(sets, Array(N).fill('OK'));
  const counter = `${base}:ctr`;
  const [gets, incrs, missing] = await Promise.all([
    Promise.all(Array.from({ length: N }, (_, i) => piped.get(`${base}:${i}`))),
    Promise.all(Array.from({ length: N }, () => piped.incr(counter))),
    Promise.all(Array.from({ length: 10 }, (_, i) => piped.get(`${base}:none:${i}`))),
  ]);
  gets.forEach((g, i) => assert.deepEqual(g, { i, s: `v${i}` }));
  assert.deepEqual([...incrs].sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i + 1));
  assert.deepEqual(missing, Array(10).fill(null));
  assert.equal(await piped.get(counter), N);
  // an error inside an auto-pipeline batch rejects only its own promise
  const str = `${base}:str`;
  await piped.set(str, 'abc');
  const results = await Promise.allSettled([piped.get(str), piped.incr(str), piped.strlen(str)]);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
  assert.equal(results[0].value, 'abc');
  assert.match(results[1].reason.message, /ERR value is not an integer/);
  assert.equal(results[2].value, 3);
  // it really used the /pipeline route
  assert.match(nginx.read('access.log'), new RegExp(`"POST /redis/${instance}/pipeline HTTP/1.1" 200`));
});

test('explicit pipeline(): exec results in order', async () => {
  const k = key('p');
  const p = redis.pipeline();
  p.set(k, 'v1');
  p.get(k);
  p.incr(`${k}:n`);
  p.hset(`${k}:h`, { f: 'x' });
  p.hgetall(`${k}:h`);
  p.get(`${k}:missing`);
  p.zadd(`${k}:z`, { score: 5, member: 'm' });
  p.zrange(`${k}:z`, 0, -1, { withScores: true });
  assert.deepEqual(await p.exec(), ['OK', 'v1', 1, 1, { f: 'x' }, null, 1, ['m', 5]]);

  // failing entry: exec() rejects by default, keepErrors shows each entry
  const p2 = redis.pipeline();
  p2.set(k, 'notanumber');
  p2.incr(k);
  p2.get(k);
  await assert.rejects(p2.exec(), /ERR value is not an integer/);
  const p3 = redis.pipeline();
  p3.incr(k);
  p3.get(k);
  const res = await p3.exec({ keepErrors: true });
  assert.equal(res.length, 2);
  assert.match(res[0].error, /ERR value is not an integer/);
  assert.equal(res[1].result, 'notanumber');
});

test('multi(): atomic exec results', async () => {
  const k = key('m');
  const tx = redis.multi();
  tx.set(k, 10);
  tx.incrby(k, 5);
  tx.get(k);
  tx.del(k);
  tx.get(k);
  assert.deepEqual(await tx.exec(), ['OK', 15, 15, 1, null]);

  // a runtime error inside EXEC fails only its own entry
  const tx2 = redis.multi();
  tx2.set(k, 'abc');
  tx2.incr(k);
  tx2.get(k);
  const res = await tx2.exec({ keepErrors: true });
  assert.equal(res[0].result, 'OK');
  assert.match(res[1].error, /ERR value is not an integer/);
  assert.equal(res[2].result, 'abc');
});

test('Redis errors propagate with the Redis text', async () => {
  const k = key('err');
  await redis.set(k, 'abc');
  await assert.rejects(redis.incr(k), (e) => {
    assert.equal(e.name, 'UpstashError');
    assert.match(e.message, /ERR value is not an integer or out of range/);
    return true;
  });
  await assert.rejects(redis.lpush(k, 'x'), /WRONGTYPE Operation against a key holding the wrong kind of value/);
  await assert.rejects(redis.hget(k, 'f'), /WRONGTYPE/);
  // raw: 400 with the verbatim text
  const r = await rg(nginx, instance, token, '', { method: 'POST', body: JSON.stringify(['LPUSH', k, 'x']) });
  assert.equal(r.status, 400);
  assert.match(r.json.error, /^WRONGTYPE /);
  assert.equal(r.json.result, undefined);
  // the value was not touched
  assert.equal(await redis.get(k), 'abc');
});

test('denied commands are rejected with 400, unknown instance 404, bad key 401', async () => {
  for (const cmd of [['CONFIG', 'GET', 'maxmemory'], ['SELECT', '1'], ['MULTI'], ['BLPOP', 'k', '0']]) {
    const r = await rg(nginx, instance, token, '', { method: 'POST', body: JSON.stringify(cmd) });
    assert.equal(r.status, 400, `${cmd[0]} -> ${r.status} ${r.text}`);
    assert.equal(typeof r.json.error, 'string');
  }
  const bad = client('not-a-valid-token');
  await assert.rejects(bad.get('x'), /Unauthorized/);
  assert.equal((await rg(nginx, instance, 'not-a-valid-token', '/get/x')).status, 401);
  assert.equal((await rg(nginx, instance, null, '/get/x')).status, 401);
  const other = new Redis({
    url: nginx.url(randomUUID()), token, retry: false, enableAutoPipelining: false,
    signal: () => AbortSignal.timeout(10000),
  });
  await assert.rejects(other.get('x'), /instance not found|not found/i);
  const r404 = await rg(nginx, randomUUID(), token, '/get/x');
  assert.equal(r404.status, 404);
  assert.equal(typeof r404.json.error, 'string');
});

test('read-only key: reads work, writes are refused with 403 and not executed', async () => {
  const k = key('ro');
  await redis.set(k, 'original');
  const ro = client(roToken);
  assert.equal(await ro.get(k), 'original');
  assert.deepEqual(await ro.mget(k, key('nope')), ['original', null]);
  await assert.rejects(ro.set(k, 'changed'), /Forbidden/);
  await assert.rejects(ro.del(k), /Forbidden/);
  const r = await rg(nginx, instance, roToken, `/set/${k}/changed2`);
  assert.equal(r.status, 403);
  assert.match(r.json.error, /Forbidden/);
  // the refused writes must not have reached Redis
  assert.equal(await redis.get(k), 'original');
  assert.equal(await redis.exists(k), 1);
});

test('read-only key inside a pipeline: write entry refused', async () => {
  const k = key('rop');
  await redis.set(k, 'original');
  const r = await rg(nginx, instance, roToken, '/pipeline', {
    method: 'POST', body: JSON.stringify([['GET', k], ['SET', k, 'changed']]),
  });
  // either the whole request is forbidden, or the write entry carries an error
  if (r.status === 200) {
    assert.deepEqual(r.json[0], { result: 'original' });
    assert.equal(typeof r.json[1].error, 'string');
  } else {
    assert.equal(r.status, 403, r.text);
  }
  assert.equal(await redis.get(k), 'original');
});

test('eval / evalsha with small Lua scripts', async () => {
  const k = key('lua');
  assert.equal(await redis.eval("return redis.call('SET', KEYS[1], ARGV[1])", [k], ['from-lua']), 'OK');
  assert.equal(await redis.get(k), 'from-lua');
  assert.deepEqual(await redis.eval('return {1, 2, ARGV[1], KEYS[1]}', [k], ['x']), [1, 2, 'x', k]);
  assert.equal(await redis.eval('return tonumber(ARGV[1]) + 1', [], [41]), 42);
  assert.equal(await redis.eval('return nil', [], []), null);
  await assert.rejects(redis.eval("return redis.error_reply('MYERR custom')", [], []), /MYERR custom/);
  const sha = await redis.scriptLoad("return redis.call('GET', KEYS[1])");
  assert.match(sha, /^[0-9a-f]{40}$/);
  assert.equal(await redis.evalsha(sha, [k], []), 'from-lua');
  await assert.rejects(redis.evalsha('0'.repeat(40), [], []), /NOSCRIPT/);
  // createScript: EVALSHA first, falls back to EVAL on NOSCRIPT
  const script = redis.createScript('return ARGV[1] .. "!"');
  assert.equal(await script.exec([], ['hi']), 'hi!');
});

test('upstash-sync-token: present, and changes after a write', async () => {
  const k = key('sync');
  const a = await rg(nginx, instance, token, `/get/${k}`);
  const t1 = a.headers.get('upstash-sync-token');
  assert.ok(t1, 'non-empty sync token');
  const w = await rg(nginx, instance, token, `/set/${k}/v`, { headers: { 'upstash-sync-token': t1 } });
  assert.equal(w.status, 200);
  const t2 = w.headers.get('upstash-sync-token');
  assert.ok(t2);
  assert.notEqual(t2, t1);
  const b = await rg(nginx, instance, token, `/get/${k}`, { headers: { 'upstash-sync-token': t2 } });
  assert.deepEqual(b.json, { result: 'v' });
  assert.ok(b.headers.get('upstash-sync-token'));
  assert.match(b.headers.get('content-type'), /application\/json/);
});

test('refused requests (401, 403, denied 400) never reach Redis', async () => {
  const k = key('refused');
  // direct check against Redis (the node of the key's slot), bypassing the gateway
  const exists = async (name) => (overCluster ? await cluster.serverOf(name) : redisSrv).command(`EXISTS ${name}`);
  assert.equal((await rg(nginx, instance, 'wrong-token', `/set/${k}:a/x`)).status, 401);
  assert.equal((await rg(nginx, instance, null, `/set/${k}:b/x`)).status, 401);
  assert.equal((await rg(nginx, instance, roToken, `/set/${k}:c/x`)).status, 403);
  const p = await rg(nginx, instance, roToken, '/pipeline', {
    method: 'POST', body: JSON.stringify([['SET', `${k}:d`, 'x']]),
  });
  assert.ok(p.status === 403 || (p.status === 200 && typeof p.json[0].error === 'string'), p.text);
  await new Promise((r) => setTimeout(r, 100));   // a wrongly sent command would have landed by now
  for (const s of ['a', 'b', 'c', 'd']) assert.equal(await exists(`${k}:${s}`), ':0', `${k}:${s} must not exist`);
  // a denied MULTI must not leave the shared connection inside a transaction
  const m = await rg(nginx, instance, token, '', { method: 'POST', body: JSON.stringify(['MULTI']) });
  assert.equal(m.status, 400);
  for (let i = 0; i < 4; i++) {   // pool connections are picked in turn: touch them all
    assert.equal(await redis.set(`${k}:after${i}`, 'v'), 'OK');
    assert.equal(await redis.get(`${k}:after${i}`), 'v');
  }
});

const nginxHasDebug = (() => {
  const v = spawnSync(process.env.NGINX_BIN || '/usr/sbin/nginx', ['-V'],
                      { encoding: 'utf8' });
  return /--with-debug/.test(`${v.stdout}${v.stderr}`);
})();

test("the module's own log lines never contain a token",
     { skip: !nginxHasDebug && 'nginx built without --with-debug' }, async () => {
  // nginx core itself logs request headers at debug level ("http header:"),
  // which this debug-level error.log shows; the module's lines must not.
  const lines = nginx.errorLog().split('\n').filter((l) => /redisgate/i.test(l));
  assert.ok(lines.length > 0, 'module logged something at debug level');
  for (const t of [token, roToken]) {
    assert.deepEqual(lines.filter((l) => l.includes(t)), [], 'token in a module log line');
  }
});
