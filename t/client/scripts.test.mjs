// What a Lua script can reach, and the mitigation docs/security.md gives:
// the gateway checks the commands of a request, never those a script calls,
// so a key with the write scope reaches FLUSHALL, SWAPDB or SELECT through
// EVAL on a Redis where the gateway's user may.  A Redis ACL user per
// tenant in the instance URL takes them away.  Each case runs on a Redis of
// its own, so emptying it harms nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRedis, startNginx, newToken, randomUUID, rg, stopAll } from './harness.mjs';

let open;        // the gateway connects as Redis's default user
let guarded;     // the gateway connects as an ACL user without admin rights
let nginx;
const OPEN = randomUUID();
const GUARDED = randomUUID();
const token = newToken();          // scopes read,write: no admin
const PASSWORD = 'acl-' + randomUUID();

const ACL = ['on', `>${PASSWORD}`, '~*', '&*', '+@all', '-@admin',
  '-@dangerous', '-select', '-swapdb', '-move', '-flushall', '-flushdb'];

before(async () => {
  [open, guarded] = await Promise.all([startRedis(), startRedis()]);
  const acl = await guarded.command(`ACL SETUSER tenant ${ACL.join(' ')}`);
  assert.equal(acl, '+OK');
  nginx = await startNginx({
    instances: [
      { uuid: OPEN, url: open.url },
      { uuid: GUARDED, url: `redis://tenant:${PASSWORD}@127.0.0.1:${guarded.port}/0` },
    ],
    keys: [{ token, id: 'writer', scopes: 'read,write' }],
  });
});

after(() => stopAll(nginx, open, guarded));

const evalScript = (id, script) =>
  rg(nginx, id, token, '', { method: 'POST', body: JSON.stringify(['EVAL', script, '0']) });

test('a write key cannot send FLUSHALL or FLUSHDB (admin scope), SELECT or SWAPDB itself', async () => {
  for (const [cmd, status] of [['FLUSHALL', 403], ['SELECT', 400], ['SWAPDB', 400], ['FLUSHDB', 403]]) {
    const args = cmd === 'SELECT' ? [cmd, '1'] : cmd === 'SWAPDB' ? [cmd, '0', '1'] : [cmd];
    const r = await rg(nginx, OPEN, token, '', { method: 'POST', body: JSON.stringify(args) });
    assert.equal(r.status, status, `${cmd}: ${r.text}`);
  }
});

test('without an ACL user, a script reaches them: the documented hole', async () => {
  assert.deepEqual((await rg(nginx, OPEN, token, '/set/victim/1')).json, { result: 'OK' });
  const sel = await evalScript(OPEN, "redis.call('SELECT', 1) redis.call('SET', 'other-db', 'x') return 'db1'");
  assert.deepEqual(sel.json, { result: 'db1' });
  assert.equal(await open.command('SELECT 1'), '+OK');
  const flush = await evalScript(OPEN, "return redis.call('FLUSHALL')");
  assert.deepEqual(flush.json, { result: 'OK' });
  assert.deepEqual((await rg(nginx, OPEN, token, '/get/victim')).json, { result: null });
});

test('with an ACL user in the instance URL, Redis refuses them inside scripts', async () => {
  assert.deepEqual((await rg(nginx, GUARDED, token, '/set/kept/1')).json, { result: 'OK' });
  for (const script of [
    "return redis.call('FLUSHALL')",
    "return redis.call('FLUSHDB')",
    "return redis.call('SELECT', 1)",
    "return redis.call('SWAPDB', 0, 1)",
    "return redis.call('MOVE', 'kept', 1)",
    "return redis.call('CONFIG', 'GET', 'maxmemory')",
  ]) {
    const r = await evalScript(GUARDED, script);
    assert.equal(r.status, 400, `${script}: ${r.text}`);
    assert.match(r.json.error, /can't run this command|not allowed from script/, script);
  }
  // ordinary scripts still work, and nothing was emptied
  const ok = await evalScript(GUARDED, "redis.call('INCR', 'kept') return redis.call('GET', 'kept')");
  assert.deepEqual(ok.json, { result: '2' });
  assert.deepEqual((await rg(nginx, GUARDED, token, '/get/kept')).json, { result: '2' });
});
