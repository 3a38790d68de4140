// Shared zones that fill up never fail a request: a rate limit zone too
// small for its organizations drops the one idle the longest, and keeps
// counting the recent ones, unsaid; a full usage zone loses counts, says
// so by an alert at most once a second and by how many at its next write,
// and writes what it kept.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRedis, startNginx, startPg, randomUUID, rg, assertCleanErrorLog, stopAll } from './harness.mjs';

const ORGS = 2000;
let redisSrv;
let nginx;
const orgs = Array.from({ length: ORGS }, (_, i) => ({
  name: `zone-org-${i}`,
  instance: randomUUID(),
  token: `rg_zone_${i}_${randomUUID()}`,
}));

before(async () => {
  redisSrv = await startRedis();
  nginx = await startNginx({
    instances: orgs.map((o) => ({ uuid: o.instance, url: redisSrv.url, organization: o.name })),
    keys: orgs.map((o) => ({ token: o.token, id: o.name, organization: o.name })),
    // the smallest zone: 8 pages; buckets of 1000 commands, slow to refill
    http: 'redisgate_limit zone=tiny_rates:32k rate=1r/s burst=1000;',
  });
});

after(() => stopAll(nginx, redisSrv));

const ping = (o) => rg(nginx, o.instance, o.token, '/ping');

test('a full limit zone drops the organization idle the longest; no request fails', async () => {
  // the first organization spends half its bucket
  const half = await rg(nginx, orgs[0].instance, orgs[0].token, '/pipeline', {
    method: 'POST', body: JSON.stringify(Array.from({ length: 500 }, () => ['PING'])),
  });
  assert.equal(half.status, 200);
  assert.equal(half.headers.get('ratelimit-remaining'), '500');

  for (let i = 1; i < ORGS; i += 50) {
    const rs = await Promise.all(orgs.slice(i, i + 50).map(ping));
    for (const r of rs) {
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get('ratelimit-limit'), '1000');
    }
  }

  // a recent organization is still counted, request after request
  const last = orgs[ORGS - 1];
  const spend = (n) => rg(nginx, last.instance, last.token, '/pipeline', {
    method: 'POST', body: JSON.stringify(Array.from({ length: n }, () => ['PING'])),
  });
  await spend(500);
  const left = Number((await spend(400)).headers.get('ratelimit-remaining'));
  assert.ok(left < 200, `the recent organization's bucket kept its count (${left} left)`);
  // the first one left the zone while idle: a new, full bucket (kept, it
  // would hold about 500 plus a token per second since)
  const again = await ping(orgs[0]);
  assert.equal(again.status, 200);
  assert.equal(again.headers.get('ratelimit-remaining'), '999',
    'the idle organization left the zone, and came back with a new bucket');
});

test('a full usage zone loses counts with an alert and a warning, never a request; what it kept is written', async (t) => {
  const pg = await startPg();
  let ng;
  const started = Date.now();
  try {
    const N = 300;
    const org = (await pg.admin('org', 'create', 'metered', '--plan', 'unlimited')).organization_id;
    const instances = (await pg.rows(`
      select redisgate.create_instance(:'org'::uuid, 'i' || g, :'addr', 0)
        from generate_series(1, :'n'::integer) g`,
    { vars: { org, addr: `127.0.0.1:${redisSrv.port}`, n: N } })).map(([id]) => id);
    const token = (await pg.admin('key', 'create', 'metered', 'app')).token;
    ng = await startNginx({
      http: [
        `redisgate_pg "${pg.conninfo()}";`,
        'redisgate_cache zone=usage_keys:1m;',
        'redisgate_usage zone=tiny_usage:32k interval=1s;',
      ].join('\n'),
    });
    for (let i = 0; i < N; i += 50) {
      const rs = await Promise.all(instances.slice(i, i + 50).map((id) => rg(ng, id, token, '/ping')));
      for (const r of rs) assert.equal(r.status, 200, r.text);
    }
    // every request is either written or counted as lost, nothing else
    let lost = 0;
    let written = 0;
    for (let i = 0; i < 100 && lost + written < N; i++) {
      await new Promise((r) => setTimeout(r, 100));
      lost = [...ng.errorLog().matchAll(/usage zone was full, (\d+) counts lost/g)]
        .reduce((s, m) => s + Number(m[1]), 0);
      written = Number(await pg.sql(
        `select coalesce(sum(requests), 0) from redisgate.usage_minutes where organization_id = :'org'`,
        { vars: { org } }));
    }
    t.diagnostic(`${N} requests on ${N} instances: ${written} written, ${lost} lost`);
    assert.ok(lost > 0, 'the zone was full');
    assert.ok(written > 0, 'what it kept was written');
    assert.equal(written + lost, N);
    // the zone said it was full, at most once a second; nothing else
    const full = /could not allocate node in redisgate usage zone "tiny_usage": the zone is full, the counts are lost/;
    const lines = ng.errorLog().split('\n');
    const alerts = lines.filter((l) => /\[alert\]/.test(l));
    assert.ok(alerts.length >= 1, 'an alert');
    assert.ok(alerts.every((l) => full.test(l)), alerts.join('\n'));
    assert.ok(alerts.length <= Math.ceil((Date.now() - started) / 1000) + 1,
      `${alerts.length} alerts`);
    assertCleanErrorLog(lines.filter((l) => !full.test(l)).join('\n'));
  } finally {
    await ng?.stop();
    await pg.stop();
  }
});
