// Host names of nginx.conf's instances, resolved again at run time.
//
// redis://localhost:P is resolved when nginx loads (127.0.0.1, where Redis A
// listens).  With a `resolver` whose DNS server answers 127.0.0.2 for
// "localhost", the next resolution moves the backend: connections to A
// close, the next requests go to 127.0.0.2:P, refused until Redis B listens
// there, then answered by B.  Without a resolver, the address read at load
// stays.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';

import {
  RedisServer, makeTmpDir, freePort, newToken, randomUUID, startNginx,
  stopAll, rg, sleep, untilOk,
} from './harness.mjs';

const token = newToken();
const instance = randomUUID();
const keys = [{ token, organization: 'acme' }];

let port;
let redisA;
let redisB;
let dns;
let withResolver;
let withoutResolver;

function canConnect(host, p) {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port: p });
    sock.on('connect', () => { sock.destroy(); resolve(true); });
    sock.on('error', () => resolve(false));
  });
}

function setOnB() {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.2', port });
    sock.on('connect', () => sock.write('SET who B\r\n'));
    sock.on('data', (d) => { sock.destroy(); resolve(d.toString().trim()); });
    sock.on('error', reject);
  });
}

// a DNS server of its own: "localhost" is 127.0.0.2 there, nothing else
async function startDns(dir) {
  const dnsPort = await freePort();
  const child = spawn('dnsmasq', [
    '--keep-in-foreground', `--port=${dnsPort}`, '--listen-address=127.0.0.1',
    '--bind-interfaces', '--no-resolv', '--no-hosts',
    '--address=/localhost/127.0.0.2', `--pid-file=${dir}/dnsmasq.pid`,
    '--user=root', '--group=root', `--log-facility=${dir}/dnsmasq.log`,
  ], { stdio: 'ignore' });
  await sleep(300);
  assert.equal(child.exitCode, null, 'dnsmasq is running');
  return { child, port: dnsPort };
}

async function get(nginx) {
  const r = await rg(nginx, instance, token, '/get/who');
  return { status: r.status, body: r.json };
}

before(async () => {
  port = await freePort();
  redisA = new RedisServer(port, makeTmpDir('rg-redis-a-'));
  await redisA.start();
  assert.equal(await redisA.command('SET who A'), '+OK');

  dns = await startDns(makeTmpDir('rg-dns-'));

  const instances = [{ uuid: instance, url: `redis://localhost:${port}/0`, organization: 'acme' }];

  withResolver = await startNginx({
    instances, keys, logLevel: 'info',
    http: `resolver 127.0.0.1:${dns.port} valid=1s ipv6=off;`,
  });
  withoutResolver = await startNginx({ instances, keys, logLevel: 'info' });
});

after(async () => {
  try {
    await stopAll(withResolver);
    await stopAll(withoutResolver);
  } finally {
    dns?.child.kill('SIGTERM');
    await Promise.all([redisA?.stop(), redisB?.stop()]);
  }
});

test('a name in nginx.conf is resolved again through the resolver, and the backend follows it', async () => {
  // the address read at load: Redis A
  assert.deepEqual(await get(withResolver), { status: 200, body: { result: 'A' } });

  // that request started a resolution in the background: the name moved
  const moved = new RegExp(`redis://localhost:${port}/0 moved, closing the connections to the old address`);
  assert.ok(await untilOk(async () => moved.test(withResolver.errorLog())),
    'the error log says the name moved');

  // nothing listens at 127.0.0.2:P yet
  const down = await get(withResolver);
  assert.equal(down.status, 500);
  assert.deepEqual(down.body, { error: 'Redis unavailable: could not connect' });
  assert.match(withResolver.errorLog(),
    new RegExp(`could not connect to Redis at redis://localhost:${port}/0: Connection refused`));

  // Redis B on the new address
  redisB = new RedisServer(port, makeTmpDir('rg-redis-b-'), ['--bind', '127.0.0.2']);
  await redisB.start();
  assert.ok(await untilOk(() => canConnect('127.0.0.2', port)), 'Redis B listens');
  assert.equal(await setOnB(), '+OK');

  // after the backoff, B answers; A still holds "A"
  assert.ok(await untilOk(async () => (await get(withResolver)).status === 200));
  assert.deepEqual(await get(withResolver), { status: 200, body: { result: 'B' } });
  assert.equal(await redisA.command('GET who'), '$1');
});

test('without a resolver, the address read at load stays', async () => {
  assert.deepEqual(await get(withoutResolver), { status: 200, body: { result: 'A' } });
  await sleep(1500);
  assert.deepEqual(await get(withoutResolver), { status: 200, body: { result: 'A' } });
  assert.doesNotMatch(withoutResolver.errorLog(), /moved|could not resolve/);
});
