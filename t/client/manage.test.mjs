// The management API over HTTP (docs/manage.md, ../shared/spec/MANAGEMENT.md):
// a location of redisgate_manage, answered by the key store
// (redisgate.manage_request()) over the module's own PostgreSQL
// connections.  Who may call (Bearer only; 401, 403), what a manager sees
// and changes (its own organization: another's ids answer 404), keys made
// here working on /redis/ at once and revoked within a second, the
// operator of nginx.conf, the errors the contract names, the audit log, and
// tokens that never reach a log.
//
// It starts its own redis-server, PostgreSQL cluster and nginx.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRedis, startNginx, startPg, freePort, newToken, sha256Hex, sleep,
  stopAll, nginxTest, redisCommands,
} from './harness.mjs';

const OPERATOR = newToken();   // redisgate_manage_key ... id=ops

let pg;
let redisSrv;
let ng;
let apiPort;
let acme;
let globex;
let acmeInst;
let manager;      // acme's key with the scope manage
let dataKey;      // acme's key with read,write only
let globexKeyId;

before(async () => {
  [pg, redisSrv] = await Promise.all([startPg(), startRedis()]);
  acme = (await pg.admin('org', 'create', 'acme', '--plan', 'unlimited')).organization_id;
  globex = (await pg.admin('org', 'create', 'globex')).organization_id;
  acmeInst = (await pg.admin('instance', 'create', 'acme', 'main',
    `127.0.0.1:${redisSrv.port}`, '--db', '3')).instance_id;
  manager = await pg.admin('key', 'create', 'acme', 'manager', '--scopes', 'manage');
  dataKey = await pg.admin('key', 'create', 'acme', 'app', '--scopes', 'read,write');
  globexKeyId = (await pg.admin('key', 'create', 'globex', 'app')).key_id;
  apiPort = await freePort();
  ng = await startNginx({
    logLevel: 'info',
    http: [
      `redisgate_pg "${pg.conninfo('application_name=rg-manage')}";`,
      'redisgate_cache zone=manage_keys:1m ttl=60s;',
      'redisgate_usage zone=manage_usage:1m interval=500ms;',
      'redisgate_limit zone=manage_rates:1m;',
      `redisgate_manage_key sha256:${sha256Hex(OPERATOR)} id=ops;`,
      `server { listen 127.0.0.1:${apiPort};`,
      '  location /redisgate/api/ { redisgate_manage; } }',
    ].join('\n'),
  });
  // revocations reach the data path through the listener
  for (let i = 0; i < 100 && !(await pg.listening('rg-manage')); i++) await sleep(50);
});

after(() => stopAll(ng, redisSrv, pg));

// one call of the API: { status, headers, json, text }
async function api(method, path, { token = manager.token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined) h['content-type'] = 'application/json';
  const r = await fetch(`http://127.0.0.1:${apiPort}/redisgate/api/${path}`, {
    method, headers: h,
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, json, text };
}

// a data request with a token
async function data(token, rest) {
  const r = await fetch(`${ng.base}/redis/${acmeInst}${rest}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: r.status, json: await r.json() };
}

// ---------------------------------------------------------------------------

test('who may call: Bearer only; 401 without a token or with an unknown one, 403 without manage; never cached', async () => {
  let r = await api('GET', 'v1/organization', { token: null });
  assert.equal(r.status, 401);
  assert.match(r.json.error, /^Unauthorized/);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  assert.equal(r.headers.get('content-type'), 'application/json');

  // ?_token= is not a way in here
  r = await api('GET', `v1/organization?_token=${manager.token}`, { token: null });
  assert.equal(r.status, 401);
  r = await api('GET', 'v1/organization', { token: null, headers: { authorization: `Basic ${manager.token}` } });
  assert.equal(r.status, 401);

  r = await api('GET', 'v1/organization', { token: newToken() });
  assert.deepEqual([r.status, r.json], [401, { error: 'Unauthorized: invalid API key' }]);

  r = await api('GET', 'v1/organization', { token: dataKey.token });
  assert.equal(r.status, 403);
  assert.match(r.json.error, /scope manage/);

  // and the manage key reads no data
  assert.equal((await data(manager.token, '/get/x')).status, 403);
});

test('a manager: its organization; a key made here works at once on /redis/, rotated, revoked within a second', async (t) => {
  let r = await api('GET', 'v1/organization');
  assert.equal(r.status, 200);
  assert.equal(r.json.id, acme);
  assert.equal(r.json.name, 'acme');
  assert.equal(r.json.plan, 'unlimited');
  assert.equal(r.headers.get('cache-control'), 'no-store');

  r = await api('POST', 'v1/keys', { body: { name: 'worker', scopes: ['read', 'write'] } });
  assert.equal(r.status, 201, r.text);
  const made = r.json;
  assert.match(made.token, /^rg_[0-9a-f]{64}$/);
  assert.deepEqual(made.scopes, ['read', 'write']);
  assert.equal(made.organization, acme);
  assert.deepEqual((await data(made.token, '/set/k/v')).json, { result: 'OK' });

  r = await api('GET', 'v1/keys?limit=1000');
  assert.equal(r.status, 200);
  assert.ok(r.json.data.some((k) => k.id === made.id && k.name === 'worker'));
  assert.equal(r.json.next, null);
  assert.ok(!r.text.includes(made.token) && !r.text.includes(sha256Hex(made.token)),
    'a listing shows no token and no hash');

  r = await api('POST', `v1/keys/${made.id}/rotate`, { body: { grace: '1 hour' } });
  assert.equal(r.status, 201, r.text);
  const rotated = r.json;
  assert.notEqual(rotated.token, made.token);
  assert.deepEqual((await data(rotated.token, '/get/k')).json, { result: 'v' });
  assert.deepEqual((await data(made.token, '/get/k')).json, { result: 'v' }, 'the old key lasts the grace');

  r = await api('DELETE', `v1/keys/${rotated.id}`);
  assert.equal(r.status, 204);
  assert.equal(r.text, '');
  const t0 = Date.now();
  let after;
  for (;;) {
    after = await data(rotated.token, '/get/k');
    if (after.status === 401 || Date.now() - t0 > 3000) break;
    await sleep(50);
  }
  t.diagnostic(`a revoked key answered 401 ${Date.now() - t0} ms after DELETE returned`);
  assert.equal(after.status, 401);
});

test('another organization\'s ids answer 404, as unknown ones; a manager makes no key for another organization', async () => {
  let r = await api('GET', `v1/keys/${globexKeyId}`);
  assert.deepEqual([r.status, r.json.error], [404, 'Not Found: no such key']);
  r = await api('DELETE', `v1/keys/${globexKeyId}`);
  assert.equal(r.status, 404);
  r = await api('GET', 'v1/keys/00000000-0000-4000-8000-000000000000');
  assert.deepEqual([r.status, r.json.error], [404, 'Not Found: no such key']);
  r = await api('POST', 'v1/keys', { body: { name: 'x', organization: globex } });
  assert.equal(r.status, 403);
  // the operator's view: globex's key is still live
  r = await api('GET', `v1/keys/${globexKeyId}`, { token: OPERATOR });
  assert.equal(r.json.state, 'active');
});

test('the errors the contract names: 400 naming the field, 404, 405 with Allow, 413', async () => {
  let r = await api('POST', 'v1/keys', { body: { name: 'x', colour: 'red' } });
  assert.deepEqual([r.status, r.json], [400, { error: 'unknown field "colour"' }]);
  r = await api('POST', 'v1/keys', { body: '{"name":' });
  assert.deepEqual([r.status, r.json], [400, { error: 'the body is not JSON' }]);
  r = await api('POST', 'v1/keys', { body: { name: 'x', scopes: ['sudo'] } });
  assert.equal(r.status, 400);
  assert.match(r.json.error, /scope "sudo"/);
  r = await api('GET', 'v1/nothing');
  assert.equal(r.status, 404);
  r = await api('GET', 'v2/keys');
  assert.equal(r.status, 404);
  r = await api('PUT', 'v1/keys', { body: {} });
  assert.equal(r.status, 405);
  assert.equal(r.headers.get('allow'), 'GET, POST');
  r = await api('POST', 'v1/keys', { body: { name: 'x'.repeat(70000) } });
  assert.equal(r.status, 413);
  assert.equal(r.headers.get('content-type'), 'application/json');
});

test('the operator of nginx.conf: any organization, named; audited as the operator', async () => {
  let r = await api('GET', 'v1/keys', { token: OPERATOR });
  assert.equal(r.status, 400);
  r = await api('GET', `v1/keys?organization=${globex}`, { token: OPERATOR });
  assert.equal(r.status, 200);
  assert.ok(r.json.data.some((k) => k.id === globexKeyId));
  r = await api('POST', 'v1/keys', { token: OPERATOR, body: { name: 'ops-made', organization: globex, scopes: ['manage'] } });
  assert.equal(r.status, 201, r.text);
  r = await api('GET', `v1/audit?organization=${globex}&limit=1`, { token: OPERATOR });
  assert.equal(r.status, 200);
  assert.equal(r.json.data[0].action, 'key.create');
  assert.deepEqual(r.json.data[0].actor, { kind: 'operator', id: 'ops' });
  assert.equal(r.json.data[0].address, '127.0.0.1');
});

test('the audit log: the organization\'s changes, newest first, who and from where; tokens in no log', async () => {
  const r = await api('GET', 'v1/audit?limit=1000');
  assert.equal(r.status, 200);
  const actions = r.json.data.map((a) => a.action);
  assert.ok(actions.includes('key.create') && actions.includes('key.rotate') && actions.includes('key.revoke'),
    JSON.stringify(actions));
  assert.ok(r.json.data.every((a) => a.organization === acme), 'acme\'s rows only');
  assert.ok(r.json.data.every((a) => a.actor.kind === 'key' && a.actor.id === manager.key_id));
  const ids = r.json.data.map((a) => Number(a.id));
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');

  const logs = ng.errorLog() + ng.read('access.log');
  for (const secret of [manager.token, OPERATOR, dataKey.token]) {
    assert.ok(!logs.includes(secret), 'no token in the logs');
  }
});

test('nginx -t: redisgate_manage_key takes a SHA-256, never a token (which it does not echo); id= names it', async () => {
  const token = newToken();
  let r = await nginxTest([`redisgate_manage_key ${token};`]);
  assert.notEqual(r.code, 0);
  assert.match(r.out, /keys are configured by the SHA-256 of the token, never the token itself/);
  assert.ok(!r.out.includes(token), 'the token is not echoed');
  r = await nginxTest([`redisgate_manage_key sha256:${sha256Hex(token)} name=ops;`]);
  assert.notEqual(r.code, 0);
  assert.match(r.out, /invalid parameter "name=ops"/);
  r = await nginxTest([`redisgate_manage_key sha256:${sha256Hex(token)} id=ops;`]);
  assert.equal(r.code, 0, r.out);
});

test('instances: one made over HTTP serves /redis/ at once (its database), suspended answers 403, usage appears', async (t) => {
  let r = await api('POST', 'v1/instances', {
    body: { name: 'made-here', address: `redis://127.0.0.1:${redisSrv.port}/5` },
  });
  assert.equal(r.status, 201, r.text);
  const inst = r.json;
  assert.equal(inst.address, `redis://127.0.0.1:${redisSrv.port}/5`);
  assert.equal(inst.has_password, false);
  r = await api('POST', 'v1/keys', { body: { name: 'for-made-here', scopes: ['read', 'write'] } });
  const k = r.json;
  const call = async (rest) => {
    const x = await fetch(`${ng.base}/redis/${inst.id}${rest}`, { headers: { authorization: `Bearer ${k.token}` } });
    return { status: x.status, json: await x.json() };
  };
  assert.deepEqual((await call('/set/made/here')).json, { result: 'OK' });
  assert.deepEqual(await redisCommands(redisSrv.port, [['SELECT', '5'], ['GET', 'made']]), ['OK', 'here']);

  r = await api('GET', 'v1/instances');
  assert.ok(r.json.data.some((i) => i.id === inst.id));

  r = await api('PATCH', `v1/instances/${inst.id}`, { body: { status: 'suspended' } });
  assert.equal(r.json.status, 'suspended');
  let after;
  for (let i = 0; i < 60; i++) {
    after = await call('/get/made');
    if (after.status === 403) break;
    await sleep(50);
  }
  assert.deepEqual(after, { status: 403, json: { error: 'Forbidden: the instance is suspended' } });
  await api('PATCH', `v1/instances/${inst.id}`, { body: { status: 'active' } });

  // the usage of the requests above, once the module wrote it (500 ms)
  let usage;
  for (let i = 0; i < 60; i++) {
    r = await api('GET', `v1/usage?instance=${inst.id}&step=minute`);
    usage = r.json.series?.[0]?.points ?? [];
    if (usage.reduce((n, p) => n + p.requests, 0) >= 1) break;
    await sleep(100);
  }
  t.diagnostic(`usage of the new instance: ${JSON.stringify(usage)}`);
  assert.equal(r.status, 200);
  assert.ok(usage.reduce((n, p) => n + p.requests, 0) >= 1, 'the SET is counted');
  assert.ok(usage.every((p) => typeof p.t === 'string' && p.bytes_out >= 0));

  r = await api('DELETE', `v1/instances/${inst.id}`);
  assert.equal(r.status, 204);
  for (let i = 0; i < 60; i++) {
    after = await call('/get/made');
    if (after.status === 404) break;
    await sleep(50);
  }
  assert.equal(after.status, 404, 'a deleted instance is gone from /redis/');
});

test('organizations are the operator\'s: create, change the plan; a manager gets 403', async () => {
  let r = await api('GET', 'v1/organizations');
  assert.equal(r.status, 403);
  r = await api('POST', 'v1/organizations', { token: OPERATOR, body: { name: 'initech', plan: 'pro' } });
  assert.equal(r.status, 201, r.text);
  const org = r.json;
  assert.deepEqual([org.name, org.plan, org.limits.requests_per_second], ['initech', 'pro', 1000]);
  r = await api('PATCH', `v1/organizations/${org.id}`, { token: OPERATOR, body: { plan: 'free' } });
  assert.deepEqual([r.status, r.json.plan], [200, 'free']);
  r = await api('GET', 'v1/organizations?limit=1000', { token: OPERATOR });
  assert.ok(r.json.data.some((o) => o.id === org.id));
});

test('a manager\'s GET /v1/organization carries its rate limit\'s live state (RateLimit-*), taking nothing', async () => {
  await pg.admin('org', 'create', 'smallco', '--plan', 'free');    // 10/s, bursts of 20
  const inst = (await pg.admin('instance', 'create', 'smallco', 'main',
    `127.0.0.1:${redisSrv.port}`, '--db', '6')).instance_id;
  const mgr = await pg.admin('key', 'create', 'smallco', 'console', '--scopes', 'manage');
  const app = await pg.admin('key', 'create', 'smallco', 'app', '--scopes', 'read,write');
  let r = await api('GET', 'v1/organization', { token: mgr.token });
  assert.deepEqual([r.headers.get('ratelimit-limit'), r.headers.get('ratelimit-remaining')], ['20', '20'],
    'untouched: full');
  // the bucket drained by the data path (20 commands in one pipeline)
  const pipe = await fetch(`${ng.base}/redis/${inst}/pipeline`, {
    method: 'POST', headers: { authorization: `Bearer ${app.token}` },
    body: JSON.stringify(Array.from({ length: 20 }, (_, i) => ['SET', `s${i}`, 'v'])),
  });
  assert.equal(pipe.status, 200);
  r = await api('GET', 'v1/organization', { token: mgr.token });
  const left = Number(r.headers.get('ratelimit-remaining'));
  assert.equal(r.headers.get('ratelimit-limit'), '20');
  assert.ok(left <= 15, `${left} left right after 20 commands`);
  assert.ok(Number(r.headers.get('ratelimit-reset')) >= 1);
  // looking takes nothing
  const again = Number((await api('GET', 'v1/organization', { token: mgr.token })).headers.get('ratelimit-remaining'));
  assert.ok(again >= left, `${again} after looking again, ${left} before`);
  // an operator's organization answer is 404 (it has none): no headers there
  r = await api('GET', 'v1/organization', { token: OPERATOR });
  assert.equal(r.headers.get('ratelimit-limit'), null);
});
