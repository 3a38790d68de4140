// Streams held on keys of the PostgreSQL key store (docs/api.md#streaming):
// a stream lives for hours on the key that opened it, so what the key store
// announces reaches open streams too.  A key revoked, an instance or an
// organization suspended, a key past its expiry: the streams of that key
// end with an error line, within about a second, and only those.  And
// MONITOR, which needs the admin scope and `redisgate_monitor on`, shows
// the instance's own database only, and ends when its key is revoked.
//
// Everything here starts its own processes: a redis-server, a PostgreSQL
// cluster (tools/pg.sh) and one nginx of 2 workers (a key is watched once
// per worker, whatever the number of its streams).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  startRedis, startNginx, startPg, redisCall, redisCommands, sleep,
  stopAll,
} from './harness.mjs';
import { Sse, until } from './sse.mjs';

const P = `rgsk-${randomBytes(4).toString('hex')}`;   // this run's channels

let pg;
let redisSrv;
let ng;
let acme;       // organization (its plan: no practical limit)
let globex;     // another organization, on the same Redis
let inst3;      // acme's instance on Redis db 3
let inst4;      // acme's instance on Redis db 4 (suspended below)
let instG;      // globex's instance on db 5
let instU;      // acme's instance on db 6 (usage)

before(async () => {
  [pg, redisSrv] = await Promise.all([startPg(), startRedis()]);
  acme = (await pg.admin('org', 'create', 'acme', '--plan', 'unlimited')).organization_id;
  globex = (await pg.admin('org', 'create', 'globex', '--plan', 'unlimited')).organization_id;
  const addr = `127.0.0.1:${redisSrv.port}`;
  inst3 = (await pg.admin('instance', 'create', 'acme', 'db3', addr, '--db', '3')).instance_id;
  inst4 = (await pg.admin('instance', 'create', 'acme', 'db4', addr, '--db', '4')).instance_id;
  instG = (await pg.admin('instance', 'create', 'globex', 'db5', addr, '--db', '5')).instance_id;
  instU = (await pg.admin('instance', 'create', 'acme', 'db6', addr, '--db', '6')).instance_id;
  ng = await startNginx({
    workers: 2,
    logLevel: 'info',
    http: [
      `redisgate_pg "${pg.conninfo('application_name=rg-stream-ks')}";`,
      'redisgate_cache zone=stream_keys:1m ttl=60s;',
      'redisgate_usage zone=stream_usage:1m interval=500ms;',
      'redisgate_sse_heartbeat 300ms;',
    ].join('\n'),
    location: 'redisgate_monitor on;',
  });
  // the listener is up before anything changes
  await until(() => pg.listening('rg-stream-ks'), 10000, 'the key store listener never LISTENed');
});

after(() => stopAll(ng, redisSrv, pg));

// ---------------------------------------------------------------------------
// helpers

async function key(org, name, scopes = 'read,write') {
  const k = await pg.admin('key', 'create', org, name, '--scopes', scopes);
  assert.match(k.token, /^rg_[0-9a-f]{64}$/);
  return { id: k.key_id, token: k.token };
}

// a stream of instance inst with token, rest after /redis/<inst>
const open = (inst, token, rest) => new Sse(ng.port, `/redis/${inst}${rest}`,
  { headers: { Authorization: `Bearer ${token}` } });

// every stream sees its first event (subscribe line, or MONITOR's "OK")
const started = (streams, what) => until(() => streams.every((s) => s.events.length > 0),
  10000, () => `${what}: ${streams.map((s) => `${s.status} ${JSON.stringify(s.events)}`).join(' ')}`);

// until each stream ended; resolves the ms it took from t0
async function endedWithin(streams, t0, what) {
  await until(() => streams.every((s) => s.done), 5000,
    () => `${what}: ${streams.map((s) => JSON.stringify(s.events.slice(-2))).join(' ')}`);
  return Date.now() - t0;
}

const publish = (ch, msg) => redisCall(redisSrv.port, ['PUBLISH', ch, msg]);

// ---------------------------------------------------------------------------

test('a key revoked: its streams (on both workers) end with the 401 line within about a second; a stream of another key goes on', async (t) => {
  const doomed = await key(acme, 'doomed');
  const other = await key(acme, 'other');
  const ch = `${P}:revoke`;
  // several streams of the key: connections land on both workers
  const streams = Array.from({ length: 6 }, () => open(inst3, doomed.token, `/subscribe/${ch}`));
  const survivor = open(inst3, other.token, `/subscribe/${ch}`);
  await started([...streams, survivor], 'subscribed');
  assert.ok(streams.every((s) => s.status === 200));

  assert.ok(await publish(ch, 'before') >= 1);
  await until(() => streams.every((s) => s.messages.length === 1), 5000, 'the first message');

  const t0 = Date.now();
  await pg.admin('key', 'revoke', doomed.id);
  const ms = await endedWithin(streams, t0, 'revoked');
  t.diagnostic(`a revoked key's 6 streams ended ${ms} ms after redisgate-admin key revoke returned`);
  for (const s of streams) {
    assert.equal(s.ended, true, 'ended with the last chunk, not cut');
    assert.deepEqual(s.errors, ['error,Unauthorized: invalid API key']);
    assert.equal(s.events.at(-1), 'error,Unauthorized: invalid API key', 'the error line is the last');
  }
  assert.ok(ms < 3000, `the streams ended ${ms} ms after the revocation`);

  // the other key's stream was not touched, and still hears
  assert.equal(survivor.done, false);
  assert.equal(await publish(ch, 'after'), 1, 'only the survivor listens now');
  await until(() => survivor.messages.length === 2, 5000, 'the survivor heard the second message');
  assert.deepEqual(survivor.messages, [`message,${ch},before`, `message,${ch},after`]);
  survivor.close();

  // and a new stream with the revoked key is refused before it starts
  const again = open(inst3, doomed.token, `/subscribe/${ch}`);
  await until(() => again.done, 5000, 'the refusal');
  assert.equal(again.status, 401);
  assert.deepEqual(again.json(), { error: 'Unauthorized: invalid API key' });
  assert.match(ng.errorLog(), /a stream's key no longer lets it run: Unauthorized: invalid API key/);
});

test('an instance suspended: the streams of that instance end with the 403 line; the same key on another instance goes on', async (t) => {
  const k = await key(acme, 'two-instances');
  const ch = `${P}:suspend`;
  const onSuspended = [open(inst4, k.token, `/subscribe/${ch}`), open(inst4, k.token, `/psubscribe/${ch}*`)];
  const onOther = open(inst3, k.token, `/subscribe/${ch}`);
  await started([...onSuspended, onOther], 'subscribed');

  const t0 = Date.now();
  await pg.admin('instance', 'suspend', inst4);
  const ms = await endedWithin(onSuspended, t0, 'suspended');
  t.diagnostic(`an instance's 2 streams ended ${ms} ms after instance suspend returned`);
  for (const s of onSuspended) {
    assert.deepEqual(s.errors, ['error,Forbidden: the instance is suspended']);
  }
  await sleep(300);
  assert.equal(onOther.done, false, 'the stream of the other instance goes on');
  assert.ok(await publish(ch, 'x') >= 1);
  await until(() => onOther.messages.length === 1, 5000, 'the other instance still hears');
  onOther.close();
  await pg.admin('instance', 'resume', inst4);
});

test('an organization suspended: every stream of its keys ends; another organization\'s goes on', async () => {
  const a = await key(acme, 'org-a');
  const g = await key(globex, 'org-g');
  const ch = `${P}:org`;
  const acmeStreams = [open(inst3, a.token, `/subscribe/${ch}`), open(inst3, a.token, `/subscribe/${ch}:2`)];
  const globexStream = open(instG, g.token, `/subscribe/${ch}`);
  await started([...acmeStreams, globexStream], 'subscribed');

  await pg.admin('org', 'suspend', 'acme');
  try {
    await endedWithin(acmeStreams, Date.now(), 'organization suspended');
    for (const s of acmeStreams) {
      assert.deepEqual(s.errors, ['error,Forbidden: the organization is suspended']);
    }
    await sleep(300);
    assert.equal(globexStream.done, false, 'globex is not acme');
  } finally {
    await pg.admin('org', 'resume', 'acme');
  }
  globexStream.close();
});

test('a key past its expiry: its stream ends without any announcement', async (t) => {
  const k = await key(acme, 'expiring');
  // an expiry a couple of seconds ahead (announced now; the end is not)
  await pg.admin('key', 'expires', k.id, new Date(Date.now() + 2500).toISOString());
  const ch = `${P}:expiry`;
  const s = open(inst3, k.token, `/subscribe/${ch}`);
  await started([s], 'subscribed');
  const t0 = Date.now();
  const ms = await endedWithin([s], t0, 'expired');
  t.diagnostic(`the stream ended ${ms} ms after it started, its key expiring ~2.5 s after the change`);
  assert.deepEqual(s.errors, ['error,Unauthorized: invalid API key']);
});

test('MONITOR over the key store: the admin scope, the instance\'s database only, ended by a revocation', async (t) => {
  const admin = await key(acme, 'monitor-admin', 'read,write,admin');
  const reader = await key(acme, 'monitor-reader', 'read');

  const refused = open(inst3, reader.token, '/monitor');
  await until(() => refused.done, 5000, 'the refusal');
  assert.equal(refused.status, 403);
  assert.deepEqual(refused.json(), { error: "Forbidden: this API key's scopes do not allow 'monitor'" });

  const mon = open(inst3, admin.token, '/monitor');
  await started([mon], 'monitoring');
  assert.equal(mon.status, 200);
  assert.equal(mon.headers['content-type'], 'text/event-stream');
  assert.deepEqual(mon.events, ['"OK"']);

  // db 3 through the gateway, db 5 (globex) and db 4 directly
  const k3 = `${P}:mine`;
  const r = await fetch(`http://127.0.0.1:${ng.port}/redis/${inst3}/set/${k3}/v1`,
    { headers: { Authorization: `Bearer ${admin.token}` } });
  assert.equal(r.status, 200, await r.text());
  await redisCommands(redisSrv.port, [['SELECT', '5'], ['SET', `${P}:globex-secret`, 's']]);
  await redisCommands(redisSrv.port, [['SELECT', '3'], ['GET', k3]]);
  await until(() => mon.events.some((e) => e.includes('"GET"')), 5000,
    () => `the GET line: ${JSON.stringify(mon.events)}`);
  const lines = mon.events.slice(1);
  t.diagnostic(`monitor lines: ${JSON.stringify(lines)}`);
  for (const l of lines) {
    assert.match(l, /^\d+\.\d+ \[3 [^\]]+\] "/, 'a line of database 3');
  }
  assert.ok(lines.some((l) => l.includes(`"set" "${k3}" "v1"`) || l.includes(`"SET" "${k3}" "v1"`)),
    'the SET through the gateway');
  assert.ok(!mon.events.some((e) => e.includes('globex-secret')), 'nothing of database 5');

  await pg.admin('key', 'revoke', admin.id);
  await endedWithin([mon], Date.now(), 'monitor revoked');
  assert.equal(mon.events.at(-1), 'error,Unauthorized: invalid API key');
  // its MONITOR connection goes with the last monitor stream
  await until(async () => !/\bcmd=monitor\b/.test(await redisCall(redisSrv.port, ['CLIENT', 'LIST'])),
    5000, 'the MONITOR connection is gone');
});

test('usage: a stream is one request and one command when it opens, and the bytes of its events as they go', async () => {
  const k = await key(acme, 'usage');
  const ch = `${P}:usage`;
  const s = open(instU, k.token, `/subscribe/${ch}`);
  await started([s], 'subscribed');
  const payloads = ['a'.repeat(1000), 'b'.repeat(2000), 'c'.repeat(3000)];
  for (const m of payloads) assert.equal(await publish(ch, m), 1);
  await until(() => s.messages.length === 3, 5000, 'the three messages');
  s.close();
  // "data: subscribe,<ch>,1\n\n" and three "data: message,<ch>,<payload>\n\n"
  const events = `data: subscribe,${ch},1\n\n`.length +
    payloads.reduce((n, m) => n + `data: message,${ch},${m}\n\n`.length, 0);
  const usage = async () => (await pg.rows(`
    select coalesce(sum(requests), 0), coalesce(sum(commands), 0), coalesce(sum(bytes_out), 0)
      from redisgate.usage_minutes where instance_id = :'inst'`, { vars: { inst: instU } }))[0].map(Number);
  let got;
  await until(async () => { got = await usage(); return got[2] >= events; }, 10000,
    () => `usage of the stream: ${JSON.stringify(got)}, expected bytes_out ${events}`);
  assert.equal(got[0], 1, 'one request');
  assert.equal(got[1], 1, 'one command');
  assert.ok(got[2] >= events && got[2] < events + 100, `bytes_out ${got[2]}, events ${events}`);
});

test('the key store down, then back: open streams go on (nothing ends them for a key store that cannot answer)', async (t) => {
  const k = await key(acme, 'pg-down');
  const ch = `${P}:pgdown`;
  const s = open(inst3, k.token, `/subscribe/${ch}`);
  await started([s], 'subscribed');

  await pg.stop();
  try {
    await sleep(1500);        // rechecks fail meanwhile (the listener is lost)
    assert.equal(s.done, false, 'the stream goes on while PostgreSQL is down');
    assert.equal(await publish(ch, 'during'), 1);
  } finally {
    await pg.start();
  }
  // the listener is back: whatever changed meanwhile is looked up again
  await until(() => pg.listening('rg-stream-ks'), 30000, 'the listener is back');
  await sleep(1500);
  assert.equal(s.done, false, 'a key still good: the stream goes on');
  assert.equal(await publish(ch, 'after'), 1);
  await until(() => s.messages.length === 2, 5000, 'both messages');
  assert.deepEqual(s.messages, [`message,${ch},during`, `message,${ch},after`]);

  // and a revocation is heard again
  await pg.admin('key', 'revoke', k.id);
  const ms = await endedWithin([s], Date.now(), 'revoked after the key store came back');
  t.diagnostic(`revoked after the key store came back: the stream ended in ${ms} ms`);
  assert.deepEqual(s.errors, ['error,Unauthorized: invalid API key']);
});
