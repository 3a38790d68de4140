// Large values (bulk.c): a single command's bulk reply of 64 kB or more
// goes to the client in pieces as Redis sends it, escaped, base64 or
// RESP2, never whole in the worker; slow readers hold the Redis connection
// only so long; clients leaving, Redis dying mid-value.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';
import {
  startRedis, startNginx, newToken, randomUUID, rg, sleep, untilOk,
  assertCleanErrorLog, significantLogLines,
} from './harness.mjs';

// under valgrind every byte costs fifty times more: smaller "huge" values
const SLOW = Boolean(process.env.REDISGATE_VALGRIND_DIR);
const HUGE = SLOW ? 8 << 20 : 100 << 20;
// the sanitizers hold freed memory back (ASan's quarantine, valgrind's
// freed-block queue): the worker's RSS says something only without them
const RSS = !process.env.REDISGATE_VALGRIND_DIR && !process.env.REDISGATE_ASAN_DIR;

let redis;
let nginx;
const ID = randomUUID();
const token = newToken();

before(async () => {
  redis = await startRedis();
  nginx = await startNginx({
    instances: [{ uuid: ID, url: redis.url }],
    keys: [{ token, id: 'large' }],
    // one connection: what a slow reader holds, the others wait behind
    http: [
      'redisgate_pool_size 1;',
      `redisgate_timeout ${SLOW ? 6 : 2}s;`,
    ].join('\n'),
    logLevel: 'info',
  });
});

after(async () => {
  await nginx?.stop();
  await redis?.stop();
});

function get(rest, init = {}) {
  return rg(nginx, ID, token, rest, { timeoutMs: SLOW ? 120000 : 30000, ...init });
}

// a value made in Redis, of n bytes: a pattern (a Buffer, or a string's
// UTF-8) repeated; its bytes go as numbers, the harness sends text
async function make(key, pattern, n) {
  const bytes = Buffer.isBuffer(pattern) ? pattern : Buffer.from(pattern);
  await redis.call(['EVAL',
    `local t = {}
     for i = 2, #ARGV do t[#t + 1] = string.char(tonumber(ARGV[i])) end
     local p = table.concat(t)
     local n = tonumber(ARGV[1])
     return redis.call('SET', KEYS[1],
                       string.sub(string.rep(p, math.ceil(n / #p)), 1, n))`,
    '1', key, String(n), ...[...bytes].map(String)], { ms: 30000 });
}

// the nginx worker's pid (the master's only child)
function workerPid() {
  const master = nginx.pid;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === master) return Number(d);
    } catch { /* gone */ }
  }
  throw new Error('no worker');
}

function vm(pid, field) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  return Number(m[1]) * 1024;
}

// the bytes of a keep-alive GET of the instance, with the token
function getText(path, headers = {}) {
  const h = Object.entries({ Authorization: `Bearer ${token}`, ...headers })
    .map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `GET /redis/${ID}${path} HTTP/1.1\r\nHost: x\r\n${h}\r\n`;
}

// a raw HTTP/1.1 GET: resolves the socket once the headers are in
function rawGet(path, headers = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(nginx.port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const onData = (d) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      sock.off('data', onData);
      sock.pause();
      resolve({ sock, head: buf.subarray(0, end).toString('latin1'), body: buf.subarray(end + 4) });
    };
    sock.on('data', onData);
    sock.on('error', reject);
    sock.write(getText(path, headers));
  });
}

// everything the socket gets until it closes (or ms pass)
function drain(sock, first, ms) {
  return new Promise((resolve) => {
    let n = first.length;
    const t = setTimeout(() => { sock.destroy(); resolve({ n, closed: false }); }, ms);
    sock.on('data', (d) => { n += d.length; });
    sock.on('close', () => { clearTimeout(t); resolve({ n, closed: true }); });
    sock.resume();
  });
}

test('1 MB of text with every kind of byte: the same JSON as the whole-reply encoder', async () => {
  // plain runs, escapes, multi-byte characters and invalid bytes, in a
  // 997-byte pattern so that they straddle every piece boundary
  let unit = '';
  for (let i = 0; i < 900; i++) unit += String.fromCharCode(0x61 + (i % 26));
  unit += '"\\\n\r\t\x01\x1f\x7f' + '\u00e9\u20ac' + '\ud83d\ude00';
  const bytes = Buffer.concat([Buffer.from(unit, 'utf8'),
    Buffer.from([0xff, 0xc3, 0x28, 0xe2, 0x82, 0x80, 0x80, 0xf0, 0x9f, 0x98])]);
  const pattern = Buffer.concat([bytes, Buffer.alloc(997 - bytes.length, 0x2e)]);
  assert.equal(pattern.length, 997);
  await make('text', pattern, 1 << 20);

  const streamed = await get('/get/text');
  assert.equal(streamed.status, 200);
  assert.equal(streamed.headers.get('transfer-encoding'), 'chunked');

  // /pipeline is never streamed: its reply is encoded whole
  const whole = await rg(nginx, ID, token, '/pipeline', {
    method: 'POST', body: JSON.stringify([['GET', 'text']]), timeoutMs: 30000,
  });
  assert.equal(whole.status, 200);
  assert.equal(streamed.text, whole.text.slice(1, -1));
  assert.equal(typeof streamed.json.result, 'string');
  assert.ok(streamed.json.result.length > 900 * 1000);
});

test('base64 and RESP2: exact lengths, the bytes back', async () => {
  const n = (1 << 20) + 1;  // not a multiple of 3: padding
  await make('bin', Buffer.from([0, 1, 2, 0xfe, 0xff, 0x80, 0x41]), n);
  const want = Buffer.alloc(n);
  for (let i = 0; i < n; i++) want[i] = [0, 1, 2, 0xfe, 0xff, 0x80, 0x41][i % 7];

  const b = await get('/get/bin', { headers: { 'Upstash-Encoding': 'base64' } });
  assert.equal(b.status, 200);
  assert.equal(Number(b.headers.get('content-length')), b.text.length);
  assert.ok(Buffer.from(b.json.result, 'base64').equals(want));

  const res = await fetch(nginx.url(ID, '/get/bin'), {
    headers: { Authorization: `Bearer ${token}`, 'Upstash-Response-Format': 'resp2' },
  });
  const body = Buffer.from(await res.arrayBuffer());
  assert.equal(res.status, 200);
  assert.equal(Number(res.headers.get('content-length')), body.length);
  assert.ok(body.equals(Buffer.concat([Buffer.from(`$${n}\r\n`), want, Buffer.from('\r\n')])));

  // smaller than 64 kB: whole, with a Content-Length, as before
  await make('small', 'ab', 60000);
  const s = await get('/get/small');
  assert.equal(Number(s.headers.get('content-length')), s.text.length);
  assert.equal(s.json.result.length, 60000);
});

test(`${HUGE >> 20} MB: linear, and the worker does not hold it`, async () => {
  await make('huge', 'abcdefghijklmnopqrstuvwxyz0123456789', HUGE);
  const pid = workerPid();
  const before = vm(pid, 'VmRSS');

  const res = await fetch(nginx.url(ID, '/get/huge'), {
    headers: { Authorization: `Bearer ${token}`, 'Upstash-Encoding': 'base64' },
    signal: AbortSignal.timeout(SLOW ? 300000 : 60000),
  });
  assert.equal(res.status, 200);
  let total = 0;
  let peak = 0;
  let chunks = 0;
  for await (const chunk of res.body) {
    total += chunk.length;
    if (++chunks % 64 === 0) peak = Math.max(peak, vm(pid, 'VmRSS'));
  }
  assert.equal(total, Number(res.headers.get('content-length')));
  assert.equal(total, 11 + Math.ceil(HUGE / 3) * 4 + 2);
  // the value is never whole in the worker: a few MB at most above where
  // it started (hiredis alone would have held all of it)
  const grew = Math.max(peak, vm(pid, 'VmRSS')) - before;
  if (RSS) assert.ok(grew < 24 << 20, `worker RSS grew by ${grew} bytes for a ${HUGE}-byte value`);
});

// keep-alive GETs on one socket, each sent when the last answer is in,
// read as fast as they come (as wrk does): resolves their body lengths
function getLoop(path, headers, count) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(nginx.port, '127.0.0.1');
    const request = getText(path, headers);
    const lengths = [];
    let head = Buffer.alloc(0);
    let body = -1;      // bytes of the body still to come; -1: in the head
    sock.on('data', (d) => {
      while (d.length) {
        if (body < 0) {
          head = Buffer.concat([head, d]);
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) return;
          const m = /content-length: (\d+)/i.exec(head.subarray(0, end).toString('latin1'));
          if (!m) { sock.destroy(); reject(new Error('no Content-Length')); return; }
          body = Number(m[1]);
          lengths.push(body);
          d = head.subarray(end + 4);
          head = Buffer.alloc(0);
        }
        const take = Math.min(body, d.length);
        body -= take;
        d = d.subarray(take);
        if (body === 0) {
          body = -1;
          if (lengths.length === count) { sock.end(); resolve(lengths); return; }
          sock.write(request);
        }
      }
    });
    sock.on('error', reject);
    sock.write(request);
  });
}

test('a run of large replies on one connection: the worker\'s memory stays flat', async (t) => {
  // each large reply's first read went through hiredis' buffer, which only
  // shrank when a read ended between replies: back to back, as here (32
  // clients, Redis's output queued behind the one streamed), it grew by
  // the rest of each read
  await make('run', 'r', 1 << 20);
  const pid = workerPid();
  const before = vm(pid, 'VmRSS');
  const each = SLOW ? 4 : 16;
  const all = await Promise.all(Array.from({ length: 32 },
    () => getLoop('/get/run', { 'Upstash-Encoding': 'base64' }, each)));
  for (const lengths of all) {
    assert.deepEqual(lengths, Array(each).fill(11 + Math.ceil((1 << 20) / 3) * 4 + 2));
  }
  const grew = vm(pid, 'VmRSS') - before;
  t.diagnostic(`worker RSS grew by ${grew} bytes over ${32 * each} replies of 1 MB`);
  if (RSS) assert.ok(grew < 6 << 20, `worker RSS grew by ${grew} bytes over ${32 * each} replies of 1 MB`);
});

test('a slow reader holds the connection, then is cut: the request behind it is answered', async () => {
  await make('ten', 'x', 10 << 20);
  const pid = workerPid();
  const before = vm(pid, 'VmRSS');

  // reads the headers, then nothing
  const slow = await rawGet('/get/ten');
  assert.match(slow.head, /^HTTP\/1\.1 200/);
  await sleep(300);
  // what waits for it in the worker is bounded, not 10 MB
  const held = vm(pid, 'VmRSS') - before;
  if (RSS) assert.ok(held < 8 << 20, `worker RSS grew by ${held} bytes for a stalled 10 MB reply`);

  // the same (only) Redis connection: answered once the slow one is cut
  const t0 = Date.now();
  const behind = await get('/get/small');
  assert.equal(behind.status, 200);
  assert.equal(behind.json.result.length, 60000);
  assert.ok(Date.now() - t0 < (SLOW ? 60000 : 10000));

  // the slow client's response ends short: the connection is closed
  const got = await drain(slow.sock, slow.body, 10000);
  assert.ok(got.closed, 'the slow client was disconnected');
  assert.ok(got.n < 10 << 20, `it got ${got.n} bytes`);
  assert.ok(await untilOk(() => /read a large reply from \S+ too slowly/.test(nginx.errorLog())));
});

test('a client that leaves mid-value: the rest is dropped, the connection goes on', async () => {
  const a = await rawGet('/get/ten');
  const first = await new Promise((resolve) => {
    a.sock.once('data', resolve);
    a.sock.resume();
  });
  assert.ok(first.length > 0);
  a.sock.destroy();

  for (let i = 0; i < 3; i++) {
    const r = await get('/get/small');
    assert.equal(r.status, 200);
    assert.equal(r.json.result.length, 60000);
  }
  const r = await get('/get/ten', { headers: { 'Upstash-Encoding': 'base64' } });
  assert.equal(r.status, 200);
  assert.equal(Buffer.from(r.json.result, 'base64').length, 10 << 20);
});

test('Redis dies mid-value: the response ends short, and the next one works', async () => {
  // more than the sockets between Redis and the client can hold
  const n = 48 << 20;
  await make('dies', 'z', n);
  const a = await rawGet('/get/dies');
  // a little in, then Redis goes
  const first = await new Promise((resolve) => {
    a.sock.once('data', resolve);
    a.sock.resume();
  });
  a.sock.pause();
  await redis.stop();
  const got = await drain(a.sock, first, 20000);
  assert.ok(got.closed, 'the client connection was closed');
  assert.ok(got.n < n, `it got ${got.n} bytes`);

  await redis.start();
  await make('after', 'y', 100000);
  assert.ok(await untilOk(async () => (await get('/get/after')).status === 200));
  const r = await get('/get/after');
  assert.equal(r.json.result.length, 100000);
  assert.match(nginx.errorLog(), /a large reply ended after \d+ bytes: Redis unavailable/);
});

test('the error log has nothing unexpected', () => {
  const log = nginx.errorLog();
  assertCleanErrorLog(log);
  const unexpected = significantLogLines(log).filter((l) => /\[(error|warn)\]/.test(l)
    && !/too slowly|a large reply ended after|lost connection to|could not connect to|Redis unavailable/.test(l));
  assert.deepEqual(unexpected, []);
});
