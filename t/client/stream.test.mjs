// Pub/sub over Server-Sent Events: /subscribe/<channel>... and
// /psubscribe/<pattern>... (PROTOCOL.md "Streaming", docs/api.md#streaming).
//
// First the real @upstash/redis client (redis.subscribe / psubscribe, and
// the flow of @upstash/realtime: psubscribe, wait for the psubscribe
// event, read the history with XRANGE, then publish).  Then raw HTTP over
// a socket of our own, to see the wire: headers, chunked framing, one
// event per "data: " line and an empty one, heartbeats, tokens, scopes.
// Then the ways in: HTTP/2 (a stream stays a request), TLS and HTTP/1.0
// (the stream keeps only its connection), the access log.  Then the
// fan-out (one subscriber connection per worker and backend), and faults:
// Redis SIGKILLed and restarted under 1,000 streams, Redis down for longer
// than redisgate_timeout, 1,100 clients leaving at once, a client that
// never reads, nginx -s reload.
//
// Two nginx: `ng` (2 workers) for all but the last two tests; `ngOne` (1
// worker, so that a slow reader and a normal one share the worker's
// subscriber connection) for the slow reader and the reload.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import http2 from 'node:http2';
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from '@upstash/redis';
import {
  startRedis, startNginx, newToken, randomUUID, rg, sleep, makeTmpDir, freePort, testCerts,
  assertCleanErrorLog, significantLogLines, runProgram, redisCommands, NGINX_BIN,
} from './harness.mjs';
import { Sse, until } from './sse.mjs';

const WORKERS = 2;
const MANY = 1000;           // the streams of the fan-out and fault tests
const P = `rgs-${randomBytes(4).toString('hex')}`;   // this run's channel names

const FULL = newToken();     // read, write
const READER = newToken();   // read only
const WRITER = newToken();   // write only

let r1;       // Redis of the client, raw and fan-out tests
let r2;       // SIGKILLed and restarted under 1,000 streams
let r3;       // down for longer than redisgate_timeout 1s
let ng;       // 2 workers
let h2Port;   // ng's HTTP/2 (h2c) server
let tlsPort;  // ng's https server
let ngOne;    // 1 worker: slow reader, reload
const A = randomUUID();      // -> r1
const B = randomUUID();      // -> r2
const C = randomUUID();      // -> r3
// ng's servers: 0 defaults (redisgate_timeout 5s, heartbeats 15s, buffer
// 1m); 1 heartbeats every 300ms; 2 redisgate_timeout 1s.
// ngOne's: 0 defaults; 1 redisgate_sse_buffer 64k.
const HEARTBEAT = 1;
const SHORT = 2;
const SMALL_BUFFER = 1;

before(async () => {
  [r1, r2, r3] = await Promise.all([startRedis(), startRedis(), startRedis()]);
  const keys = [
    { token: FULL, id: 'stream-full', scopes: 'read,write' },
    { token: READER, id: 'stream-reader', scopes: 'read' },
    { token: WRITER, id: 'stream-writer', scopes: 'write' },
  ];
  [h2Port, tlsPort] = [await freePort(), await freePort()];
  const certs = testCerts();
  [ng, ngOne] = await Promise.all([
    startNginx({
      instances: [{ uuid: A, url: r1.url }, { uuid: B, url: r2.url }, { uuid: C, url: r3.url }],
      keys,
      workers: WORKERS,
      workerConnections: 4096,
      logLevel: 'info',
      http: [
        'redisgate_timeout 5s;',
        'redisgate_connect_timeout 1s;',
        // a stream over HTTP/2 stays a request; over TLS it is detached
        `server { listen 127.0.0.1:${h2Port} http2; location /redis/ { redisgate; } }`,
        // sndbuf: the kernel holds little, so what waits is the stream's
        `server { listen 127.0.0.1:${tlsPort} ssl sndbuf=16k;`,
        `  ssl_certificate ${certs.file('server.crt')};`,
        `  ssl_certificate_key ${certs.file('server.key')};`,
        '  location /redis/ { redisgate; } }',
      ].join('\n'),
      servers: [
        { location: 'redisgate_sse_heartbeat 300ms;' },
        { location: 'redisgate_timeout 1s;' },
      ],
    }),
    startNginx({
      instances: [{ uuid: A, url: r1.url }],
      keys,
      workers: 1,
      logLevel: 'info',
      servers: [{ location: 'redisgate_sse_buffer 64k;' }],
    }),
  ]);
});

after(async () => {
  try {
    for (const n of [ng, ngOne]) {
      if (!n) continue;
      const running = n.running;
      await n.stop();
      assert.ok(running, 'nginx master was still running at the end');
      assertCleanErrorLog(n.errorLog());
    }
  } finally {
    await Promise.all([r1?.stop(), r2?.stop(), r3?.stop()]);
  }
});

// ---------------------------------------------------------------------------
// helpers

// a stream on nginx n (server index), path after /redis/<id>
const open = (n, id, rest, opts = {}) => {
  const { server = 0, token = FULL, ...o } = opts;
  const headers = { ...(o.headers ?? {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  return new Sse(n.ports[server], `/redis/${id}${rest}`, { ...o, headers });
};

// PUBSUB NUMSUB as { channel: n }
async function numsub(redis, channels) {
  const r = await redis.call(['PUBSUB', 'NUMSUB', ...channels]);
  const out = {};
  for (let i = 0; i < r.length; i += 2) out[r[i]] = Number(r[i + 1]);
  return out;
}

// PUBLISH of raw bytes (redisCall sends strings as UTF-8): the receivers
function publishBytes(port, channel, payload) {
  const ch = Buffer.from(channel);
  const cmd = Buffer.concat([
    Buffer.from(`*3\r\n$7\r\nPUBLISH\r\n$${ch.length}\r\n`), ch,
    Buffer.from(`\r\n$${payload.length}\r\n`), payload, Buffer.from('\r\n'),
  ]);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' }, () => sock.write(cmd));
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      const m = /^:(\d+)\r\n/.exec(buf);
      if (m) { sock.destroy(); resolve(Number(m[1])); }
    });
    sock.on('error', reject);
  });
}

// CLIENT LIST's connections in subscribe mode (those of the gateway's hubs)
async function subscribers(redis) {
  const list = await redis.call(['CLIENT', 'LIST']);
  return list.split('\n').filter((l) => /\b(sub|psub)=[1-9]/.test(l));
}

// CLIENT LIST's connections whose last command was a (un)subscription: a hub
// that unsubscribed but stayed would show here
async function hubConnections(redis) {
  const list = await redis.call(['CLIENT', 'LIST']);
  return list.split('\n').filter((l) => /\b(sub|psub)=[1-9]|\bcmd=p?(un)?subscribe\b/.test(l));
}

const fmt = (streams) => streams.slice(0, 3).map((s) =>
  `[${s.status} ${JSON.stringify(s.events.slice(-3))} ended=${s.ended} closed=${s.closed}]`).join(' ');

// the worker pids of an nginx master (Linux)
function workerPids(n) {
  try {
    return readFileSync(`/proc/${n.pid}/task/${n.pid}/children`, 'utf8').trim().split(/\s+/)
      .filter(Boolean).map(Number);
  } catch { return []; }
}

// ---------------------------------------------------------------------------
// the @upstash/redis client

const client = () => new Redis({ url: ng.url(A), token: FULL, enableTelemetry: false });

test('client: subscribe; the subscribe event first; what each kind of payload becomes', async () => {
  const redis = client();
  const ch = `${P}:c1`;
  const seen = [];
  const sub = redis.subscribe([ch]);
  sub.on('subscribe', (n) => seen.push(['subscribe', n]));
  sub.on('message', ({ channel, message }) => seen.push(['message', channel, message]));
  sub.on('error', (e) => seen.push(['error', String(e)]));
  try {
    await until(() => seen.length, 5000, 'the subscribe event');
    assert.deepEqual(seen, [['subscribe', 1]]);
    // the event came once Redis had the subscription: a publish now reaches it
    assert.deepEqual(await numsub(r1, [ch]), { [ch]: 1 });

    const pretty = JSON.stringify({ a: 1 }, null, 2);
    const published = [
      { user: 'ann', n: 3, tags: ['a', 'b'], nested: { ok: true } },
      'a,b,,c',
      'héllo wörld, 世界 🚀',
      'line1\nline2',
      'cr\r\nlf',
      pretty,
      { text: 'x\ny' },
      '42',
    ];
    for (const m of published) assert.equal(await redis.publish(ch, m), 1);
    await until(() => seen.length === 1 + published.length, 5000,
      () => `all ${published.length} messages: ${JSON.stringify(seen)}`);
    // What arrives is the payload as Redis has it, except line breaks: a
    // line feed is sent as the two characters backslash and "n" (a carriage
    // return as "\r"), so an event stays one line.  The client then tries
    // JSON.parse on the text and hands over the text when that fails:
    //  - a JSON object published by the client (JSON.stringify: no raw line
    //    breaks, "\n" inside strings already escaped) comes back as the
    //    same object, line feeds in its strings included;
    //  - 'line1\nline2' comes back as 'line1\\nline2': a backslash and an
    //    "n", not a line feed (and so does a payload that had a backslash
    //    and an "n" to begin with: the two cannot be told apart);
    //  - pretty-printed JSON (line feeds between its tokens) is no longer
    //    JSON on the wire: the client hands over the text, '\\n' in it;
    //  - '42' becomes the number 42: the client's JSON.parse, not ours.
    assert.deepEqual(seen, [
      ['subscribe', 1],
      ['message', ch, { user: 'ann', n: 3, tags: ['a', 'b'], nested: { ok: true } }],
      ['message', ch, 'a,b,,c'],
      ['message', ch, 'héllo wörld, 世界 🚀'],
      ['message', ch, 'line1\\nline2'],
      ['message', ch, 'cr\\r\\nlf'],
      ['message', ch, '{\\n  "a": 1\\n}'],
      ['message', ch, { text: 'x\ny' }],
      ['message', ch, 42],
    ]);
  } finally {
    await sub.unsubscribe();
  }
  await until(async () => (await numsub(r1, [ch]))[ch] === 0, 5000, 'NUMSUB back to 0');
});

test('client: several channels (a request each); unsubscribe one, then all: NUMSUB back to 0', async () => {
  const redis = client();
  const chans = [`${P}:m1`, `${P}:m2`, `${P}:m3`];
  const counts = [];
  const got = [];
  const onlyM2 = [];
  const sub = redis.subscribe(chans);
  sub.on('subscribe', (n) => counts.push(n));
  sub.on('message', ({ channel, message }) => got.push(`${channel}=${message}`));
  sub.on(`message:${chans[1]}`, ({ message }) => onlyM2.push(message));
  try {
    await until(() => counts.length === 3, 5000, () => `3 subscribe events: ${counts}`);
    // one stream per channel: each says 1
    assert.deepEqual(counts, [1, 1, 1]);
    assert.deepEqual(sub.getSubscribedChannels(), chans);
    assert.deepEqual(await numsub(r1, chans), Object.fromEntries(chans.map((c) => [c, 1])));
    for (const c of chans) await redis.publish(c, `to ${c}`);
    await until(() => got.length === 3, 5000, () => JSON.stringify(got));
    assert.deepEqual(got.sort(), chans.map((c) => `${c}=to ${c}`));
    assert.deepEqual(onlyM2, [`to ${chans[1]}`]);

    await sub.unsubscribe([chans[0]]);
    await until(async () => (await numsub(r1, [chans[0]]))[chans[0]] === 0, 5000,
      'NUMSUB of the channel left back to 0');
    assert.deepEqual(await numsub(r1, chans.slice(1)), { [chans[1]]: 1, [chans[2]]: 1 });
    assert.equal(await redis.publish(chans[0], 'nobody'), 0);
    await redis.publish(chans[2], 'still');
    await until(() => got.length === 4, 5000, () => JSON.stringify(got));
    assert.equal(got[3], `${chans[2]}=still`);
    assert.deepEqual(sub.getSubscribedChannels(), chans.slice(1));
  } finally {
    await sub.unsubscribe();
  }
  await until(async () => Object.values(await numsub(r1, chans)).every((n) => n === 0), 5000,
    'NUMSUB of every channel back to 0');
  // the last channel gone, the subscriber connection goes too
  await until(async () => (await hubConnections(r1)).length === 0, 5000,
    async () => `no subscriber connection left: ${await hubConnections(r1)}`);
});

test('client: psubscribe: the psubscribe event, pmessage with the pattern and the channel', async () => {
  const redis = client();
  const pattern = `${P}:news.*`;
  const seen = [];
  const sub = redis.psubscribe([pattern]);
  sub.on('psubscribe', (n) => seen.push(['psubscribe', n]));
  sub.on('pmessage', (m) => seen.push(['pmessage', m]));
  sub.on(`pmessage:${pattern}`, (m) => seen.push(['pmessage:pattern', m.channel]));
  try {
    await until(() => seen.length, 5000, 'the psubscribe event');
    assert.deepEqual(seen, [['psubscribe', 1]]);
    assert.equal(await r1.call(['PUBSUB', 'NUMPAT']), 1);
    await redis.publish(`${P}:other`, 'not for us');
    await redis.publish(`${P}:news.tech`, { title: 'x, y' });
    await until(() => seen.length === 3, 5000, () => JSON.stringify(seen));
    assert.deepEqual(seen.slice(1), [
      ['pmessage', { pattern, channel: `${P}:news.tech`, message: { title: 'x, y' } }],
      ['pmessage:pattern', `${P}:news.tech`],
    ]);
  } finally {
    await sub.unsubscribe();
  }
  await until(async () => (await r1.call(['PUBSUB', 'NUMPAT'])) === 0, 5000, 'NUMPAT back to 0');
});

test('client: the @upstash/realtime flow: psubscribe, wait for psubscribe, XRANGE the history, publish', async () => {
  // @upstash/realtime's handler psubscribes to the room's events and reads
  // the room's stream (XRANGE) only once the psubscribe event came: an
  // event emitted (XADD, then PUBLISH) from then on is either in what
  // XRANGE returns or arrives as a pmessage, never in neither
  const redis = client();
  const room = `${P}:room`;
  const emit = async (data) => {
    const id = await redis.xadd(room, '*', { data: JSON.stringify(data) });
    await redis.publish(`${room}:event:chat`, { data, __stream_id: id });
    return id;
  };
  const before = [await emit({ n: 0 }), await emit({ n: 1 })];
  const live = [];
  let history = null;
  const sub = redis.psubscribe([`${room}:event:*`]);
  sub.on('pmessage', ({ channel, message }) => live.push({ channel, ...message }));
  const ready = new Promise((resolve, reject) => {
    sub.on('psubscribe', async () => {
      try {
        // an event emitted right as the subscription is confirmed: XRANGE
        // has it, and so does the stream
        const raced = await emit({ n: 2 });
        history = await redis.xrange(room, '-', '+');
        resolve(raced);
      } catch (e) { reject(e); }
    });
  });
  try {
    const raced = await Promise.race([ready, sleep(5000).then(() => { throw new Error('no psubscribe event'); })]);
    assert.deepEqual(Object.keys(history), [...before, raced]);
    const after = await emit({ n: 3 });
    await until(() => live.length === 2, 5000, () => JSON.stringify(live));
    assert.deepEqual(live, [
      { channel: `${room}:event:chat`, data: { n: 2 }, __stream_id: raced },
      { channel: `${room}:event:chat`, data: { n: 3 }, __stream_id: after },
    ]);
  } finally {
    await sub.unsubscribe();
  }
});

// ---------------------------------------------------------------------------
// the wire

test('raw: 200, the event-stream headers, chunked; one event per line pair, escaped line breaks', async () => {
  // a name twice is one subscription; %0A in the path is a line feed in
  // the channel's name
  const chans = [`${P}:w1`, `${P}:w,2`, `${P}:nl\nname`];
  const s = open(ng, A, `/subscribe/${encodeURIComponent(chans[0])}/${encodeURIComponent(chans[1])}` +
    `/${encodeURIComponent(chans[0])}/${encodeURIComponent(chans[2])}`);
  try {
    await until(() => s.events.length === 3, 5000, () => fmt([s]));
    assert.equal(s.statusLine, 'HTTP/1.1 200 OK');
    assert.equal(s.headers['content-type'], 'text/event-stream');
    assert.equal(s.headers['cache-control'], 'no-cache');
    assert.equal(s.headers['x-accel-buffering'], 'no');
    assert.equal(s.headers['transfer-encoding'], 'chunked');
    assert.equal(s.headers['content-length'], undefined);
    assert.deepEqual(await numsub(r1, chans), Object.fromEntries(chans.map((c) => [c, 1])));

    const payloads = ['plain', 'a,b,,c', 'héllo 世界 🚀', 'l1\nl2\r\nl3\r', '', '{"k":"v\\nw"}'];
    for (const p of payloads) await r1.call(['PUBLISH', chans[0], p]);
    await r1.call(['PUBLISH', chans[2], 'to the odd one']);
    // bytes that are not UTF-8 pass as they are
    assert.equal(await publishBytes(r1.port, chans[1], Buffer.from([0x62, 0xff, 0x00, 0x65])), 1);
    await until(() => s.events.length === 3 + payloads.length + 2, 5000, () => fmt([s]));

    const body = s.body();
    const expect = Buffer.concat([
      Buffer.from([
        `data: subscribe,${chans[0]},1\n\n`,
        `data: subscribe,${chans[1]},2\n\n`,
        `data: subscribe,${P}:nl\\nname,3\n\n`,
        `data: message,${chans[0]},plain\n\n`,
        `data: message,${chans[0]},a,b,,c\n\n`,
        `data: message,${chans[0]},héllo 世界 🚀\n\n`,
        `data: message,${chans[0]},l1\\nl2\\r\\nl3\\r\n\n`,
        `data: message,${chans[0]},\n\n`,
        `data: message,${chans[0]},{"k":"v\\nw"}\n\n`,
        `data: message,${P}:nl\\nname,to the odd one\n\n`,
      ].join('')),
      Buffer.from(`data: message,${chans[1]},b`), Buffer.from([0xff, 0x00]), Buffer.from('e\n\n'),
    ]);
    assert.equal(body.toString('latin1'), expect.toString('latin1'));
    assert.equal(s.comments, 0);
    assert.equal(s.ended, false);
  } finally {
    s.close();
  }
});

test('raw: heartbeats ":" every redisgate_sse_heartbeat (300ms), none with the default 15s', async () => {
  const ch = `${P}:hb`;
  const hb = open(ng, A, `/subscribe/${ch}`, { server: HEARTBEAT });
  const quiet = open(ng, A, `/subscribe/${ch}`);
  try {
    await until(() => hb.subscribed && quiet.subscribed, 5000, () => fmt([hb, quiet]));
    const t0 = Date.now();
    await sleep(1000);
    await r1.call(['PUBLISH', ch, 'between beats']);
    await sleep(300);
    const ms = Date.now() - t0;
    // ~300 ms apart: 4 in 1.3 s; a loaded machine may be late by one
    assert.ok(hb.comments >= 3 && hb.comments <= 5, `${hb.comments} heartbeats in ${ms} ms`);
    assert.equal(quiet.comments, 0);
    // a heartbeat is ":" and an empty line, between whole events
    assert.match(hb.text(), /^(?:(?:data: [^\n]*|:)\n\n)+$/);
    assert.deepEqual(hb.events, [`subscribe,${ch},1`, `message,${ch},between beats`]);
    assert.deepEqual(hb.others, []);
  } finally {
    hb.close();
    quiet.close();
  }
});

test('raw: ?_token=, GET and POST, a read-only key; 401, 403 without read, 400 without a channel', async () => {
  const ch = `${P}:auth`;
  const wait = (s) => until(() => s.subscribed || s.ended, 5000, () => fmt([s]));
  const byQuery = open(ng, A, `/subscribe/${ch}?_token=${READER}`, { token: null });
  // as the client does it: POST, body [], Accept: text/event-stream, the
  // base64 encoding asked for (which SSE lines ignore)
  const posted = open(ng, A, `/subscribe/${ch}`, {
    method: 'POST', body: '[]', token: READER,
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', 'Upstash-Encoding': 'base64' },
  });
  const pposted = open(ng, A, `/psubscribe/${ch}*`, { method: 'POST', body: '[]' });
  const streams = [byQuery, posted, pposted];
  try {
    await Promise.all(streams.map(wait));
    assert.deepEqual(streams.map((s) => [s.status, s.events]), [
      [200, [`subscribe,${ch},1`]],
      [200, [`subscribe,${ch},1`]],
      [200, [`psubscribe,${ch}*,1`]],
    ]);
    // the body [] is no channel
    const channels = await r1.call(['PUBSUB', 'CHANNELS', `${P}*`]);
    assert.deepEqual(channels, [ch]);
    await r1.call(['PUBLISH', ch, 'hi']);
    await until(() => streams.every((s) => s.events.length === 2), 5000, () => fmt(streams));
    assert.deepEqual(streams.map((s) => s.events[1]),
      [`message,${ch},hi`, `message,${ch},hi`, `pmessage,${ch}*,${ch},hi`]);
  } finally {
    for (const s of streams) s.close();
  }

  const plain = async (rest, { token, ...init }) => rg(ng, A, token, rest, init);
  const forbidden = await plain(`/subscribe/${ch}`, { token: WRITER });
  assert.equal(forbidden.status, 403);
  assert.match(forbidden.headers.get('content-type'), /application\/json/);
  assert.deepEqual(forbidden.json, { error: "Forbidden: this API key's scopes do not allow 'subscribe'" });
  const pforbidden = await plain(`/psubscribe/${ch}*`, { token: WRITER, method: 'POST', body: '[]' });
  assert.equal(pforbidden.status, 403);
  assert.deepEqual(pforbidden.json, { error: "Forbidden: this API key's scopes do not allow 'psubscribe'" });

  for (const [rest, init, what] of [
    ['/subscribe', { token: FULL }, 'channel'],
    ['/subscribe/', { token: FULL }, 'channel'],
    ['/subscribe', { token: FULL, method: 'POST', body: '[]' }, 'channel'],
    ['/psubscribe', { token: READER }, 'pattern'],
  ]) {
    const r = await plain(rest, init);
    const name = rest.replace(/\//g, '');
    assert.equal(r.status, 400, `${rest}: ${r.text}`);
    assert.deepEqual(r.json, { error: `ERR ${name} needs at least one ${what}: /${name}/<name>` }, rest);
  }

  const noToken = await plain(`/subscribe/${ch}`, {});
  assert.equal(noToken.status, 401, noToken.text);
  assert.equal(typeof noToken.json?.error, 'string');
  const badToken = await plain(`/subscribe/${ch}?_token=rg_wrong`, {});
  assert.equal(badToken.status, 401, badToken.text);
  assert.deepEqual(await numsub(r1, [ch]), { [ch]: 0 });
});

// ---------------------------------------------------------------------------
// fan-out

test('HTTP/2: streams stay requests; two on one connection, a message each; one cancelled leaves, the other goes on', async () => {
  const ch1 = `${P}:h2-one`;
  const ch2 = `${P}:h2-two`;
  const session = http2.connect(`http://127.0.0.1:${h2Port}`);
  session.on('error', () => {});
  const open2 = (ch) => {
    const sse = new Sse(null, null);
    const st = session.request({ ':path': `/redis/${A}/subscribe/${ch}`, authorization: `Bearer ${FULL}` });
    st.on('response', (h) => { sse.status = h[':status']; sse.headers = h; });
    st.on('data', (d) => sse.bodyBytes(d));
    st.on('end', () => { sse.ended = true; });
    st.on('error', () => { sse.closed = true; });
    return { st, sse };
  };
  try {
    const one = open2(ch1);
    const two = open2(ch2);
    await until(() => one.sse.subscribed && two.sse.subscribed, 5000,
      () => `subscribed: ${JSON.stringify([one.sse.events, two.sse.events])}`);
    assert.equal(one.sse.status, 200);
    assert.equal(one.sse.headers['content-type'], 'text/event-stream');
    assert.equal(await r1.call(['PUBLISH', ch1, 'h2 one']), 1);
    assert.equal(await r1.call(['PUBLISH', ch2, 'h2 two']), 1);
    await until(() => one.sse.messages.length === 1 && two.sse.messages.length === 1, 5000, 'a message each');
    assert.deepEqual(one.sse.messages, [`message,${ch1},h2 one`]);
    assert.deepEqual(two.sse.messages, [`message,${ch2},h2 two`]);

    // RST_STREAM: the listener of that stream leaves, the other stays
    one.st.close(http2.constants.NGHTTP2_CANCEL);
    await until(async () => (await numsub(r1, [ch1]))[ch1] === 0, 5000, 'the cancelled stream unsubscribed');
    assert.equal((await numsub(r1, [ch2]))[ch2], 1);
    assert.equal(await r1.call(['PUBLISH', ch2, 'h2 again']), 1);
    await until(() => two.sse.messages.length === 2, 5000, 'the other stream goes on');
    assert.equal(two.sse.done, false);
  } finally {
    session.destroy();
  }
  await until(async () => (await numsub(r1, [ch2]))[ch2] === 0, 5000, 'all unsubscribed once the connection went');
});

test('TLS: a stream over https (the connection kept, the request freed): messages up to 200 kB, then the client leaves', async () => {
  const ch = `${P}:tls`;
  const s = new Sse(tlsPort, `/redis/${A}/subscribe/${ch}`, {
    headers: { Authorization: `Bearer ${FULL}` },
    tlsOptions: { ca: readFileSync(testCerts().file('ca.crt')) },
  });
  await until(() => s.subscribed, 5000, () => `subscribed: ${s.status} ${JSON.stringify(s.events)}`);
  assert.equal(s.headers['transfer-encoding'], 'chunked');
  const big = 'x'.repeat(200 * 1024);
  for (const m of ['small', big, 'after']) assert.equal(await r1.call(['PUBLISH', ch, m]), 1);
  await until(() => s.messages.length === 3, 10000, () => `3 messages: ${s.messages.length}`);
  assert.deepEqual(s.messages, [`message,${ch},small`, `message,${ch},${big}`, `message,${ch},after`]);
  s.close();
  await until(async () => (await numsub(r1, [ch]))[ch] === 0, 5000, 'unsubscribed');
});

test('TLS: a client that stops reading for a while, then reads: every message arrives whole (what waits moves as it grows)', async () => {
  const ch = `${P}:tls-stall`;
  const s = new Sse(tlsPort, `/redis/${A}/subscribe/${ch}`, {
    headers: { Authorization: `Bearer ${FULL}` },
    tlsOptions: { ca: readFileSync(testCerts().file('ca.crt')) },
    keep: false,
  });
  await until(() => s.subscribed, 5000, () => `subscribed: ${s.status} ${JSON.stringify(s.events)}`);
  s.sock.pause();
  // 600 kB: past the socket buffers, under redisgate_sse_buffer (1m)
  const sent = Array.from({ length: 30 }, (_, i) => `${i}:` + String.fromCharCode(97 + (i % 26)).repeat(20000));
  for (const m of sent) assert.equal(await r1.call(['PUBLISH', ch, m]), 1);
  await sleep(300);
  s.sock.resume();
  await until(() => s.messages.length === 30, 10000, () => `${s.messages.length} of 30, ended ${s.done}`);
  assert.deepEqual(s.messages, sent.map((m) => `message,${ch},${m}`));
  assert.equal(s.done, false);
  s.close();
});

test('HTTP/1.0: the events unchunked, one after the other; the client leaves: unsubscribed', async () => {
  const ch = `${P}:http10`;
  const s = open(ng, A, `/subscribe/${ch}`, { version: '1.0' });
  await until(() => s.subscribed, 5000, () => `subscribed: ${s.statusLine} ${JSON.stringify(s.events)}`);
  assert.match(s.statusLine, /^HTTP\/1\.1 200/);
  assert.equal(s.headers['transfer-encoding'], undefined, 'no chunks for HTTP/1.0');
  assert.equal(await r1.call(['PUBLISH', ch, 'one']), 1);
  assert.equal(await r1.call(['PUBLISH', ch, 'two']), 1);
  await until(() => s.messages.length === 2, 5000, 'two messages');
  assert.equal(s.text(), `data: subscribe,${ch},1\n\ndata: message,${ch},one\n\ndata: message,${ch},two\n\n`);
  s.close();
  await until(async () => (await numsub(r1, [ch]))[ch] === 0, 5000, 'unsubscribed');
});

test('the access log has an HTTP/1.1 stream once it runs (200), before it ends', async () => {
  const ch = `${P}:logged`;
  const s = open(ng, A, `/subscribe/${ch}`);
  await until(() => s.subscribed, 5000, 'subscribed');
  const line = new RegExp(`"GET /redis/${A}/subscribe/${ch} HTTP/1\\.1" 200 \\d+`);
  await until(() => line.test(ng.read('access.log')), 5000, 'the access log line of the open stream');
  assert.equal(s.done, false);
  s.close();
});

test(`fan-out: ${MANY} streams over 20 channels, one subscriber connection per worker; ${MANY + 100} leaving at once`, async (t) => {
  const chans = Array.from({ length: 20 }, (_, i) => `${P}:fan:${i}`);
  const streams = Array.from({ length: MANY }, (_, i) => open(ng, A, `/subscribe/${chans[i % 20]}`, { keep: false }));
  const all = [...streams];
  try {
    await until(() => streams.every((s) => s.subscribed), 20000,
      () => `${streams.filter((s) => s.subscribed).length}/${MANY} subscribed ${fmt(streams.filter((s) => !s.subscribed))}`);
    const subs = await subscribers(r1);
    assert.ok(subs.length >= 1 && subs.length <= WORKERS,
      `${subs.length} subscriber connections for ${WORKERS} workers:\n${subs.join('\n')}`);
    const ns = await numsub(r1, chans);
    t.diagnostic(`${subs.length} subscriber connection(s); NUMSUB ${Object.values(ns).join(',')}`);
    assert.ok(Object.values(ns).every((n) => n >= 1 && n <= WORKERS), JSON.stringify(ns));
    // PUBLISH reaches a connection per worker at most; the gateway fans out
    for (const c of chans) {
      const n = await r1.call(['PUBLISH', c, `hello ${c}`]);
      assert.equal(n, ns[c]);
    }
    await until(() => streams.every((s) => s.events.length === 2), 5000,
      () => fmt(streams.filter((s) => s.events.length !== 2)));
    streams.forEach((s, i) => assert.deepEqual(s.events,
      [`subscribe,${chans[i % 20]},1`, `message,${chans[i % 20]},hello ${chans[i % 20]}`]));

    // 100 more: 50 on a pattern, 50 on two channels each
    for (let i = 0; i < 50; i++) all.push(open(ng, A, `/psubscribe/${P}:fan:1*`, { keep: false }));
    for (let i = 0; i < 50; i++) {
      all.push(open(ng, A, `/subscribe/${chans[i % 20]}/${P}:fan:extra`, { keep: false }));
    }
    await until(() => all.slice(MANY, MANY + 50).every((s) => s.events.length === 1)
      && all.slice(MANY + 50).every((s) => s.events.length === 2), 10000,
    () => fmt(all.slice(MANY).filter((s) => s.events.length < (s.events[0]?.startsWith('p') ? 1 : 2))));
    assert.ok(all.slice(MANY, MANY + 50).every((s) => s.events[0] === `psubscribe,${P}:fan:1*,1`));
    // counts in the order Redis confirmed: a channel the worker already
    // had is confirmed at once, a new one a round trip later
    all.slice(MANY + 50).forEach((s, i) => {
      assert.deepEqual(s.events.map((e) => e.replace(/,\d+$/, '')).sort(),
        [`subscribe,${chans[i % 20]}`, `subscribe,${P}:fan:extra`].sort());
      assert.deepEqual(s.events.map((e) => e.split(',').at(-1)), ['1', '2']);
    });
    assert.ok((await subscribers(r1)).length <= WORKERS);
    assert.ok((await r1.call(['PUBSUB', 'NUMPAT'])) <= WORKERS);
  } finally {
    // MANY + 100 clients leave at once
    for (const s of all) s.close();
  }
  const everything = [...chans, `${P}:fan:extra`];
  await until(async () => Object.values(await numsub(r1, everything)).every((n) => n === 0)
    && (await r1.call(['PUBSUB', 'NUMPAT'])) === 0, 5000,
  async () => `NUMSUB ${JSON.stringify(await numsub(r1, everything))}`);
  assert.deepEqual(await r1.call(['PUBSUB', 'CHANNELS', `${P}:fan:*`]), []);
  await until(async () => (await hubConnections(r1)).length === 0, 5000,
    async () => `no subscriber connection left:\n${(await hubConnections(r1)).join('\n')}`);
  // and the gateway still answers
  assert.deepEqual((await rg(ng, A, FULL, '/ping')).json, { result: 'PONG' });
});

// ---------------------------------------------------------------------------
// faults

test(`Redis SIGKILLed and restarted within redisgate_timeout: ${MANY} streams go on and hear what comes after`, async () => {
  const chans = Array.from({ length: 20 }, (_, i) => `${P}:k:${i}`);
  const streams = Array.from({ length: MANY }, (_, i) => (i % 10 === 9
    ? open(ng, B, `/psubscribe/${chans[i % 20]}*`, { keep: false })
    : open(ng, B, `/subscribe/${chans[i % 20]}`, { keep: false })));
  const logStart = ng.errorLog().length;
  try {
    await until(() => streams.every((s) => s.subscribed), 20000,
      () => `${streams.filter((s) => s.subscribed).length}/${MANY} subscribed`);
    const baseline = await numsub(r2, chans);

    r2.child.kill('SIGKILL');
    await r2.stop();
    await sleep(300);
    await r2.start();
    // the hubs subscribe again (100 ms backoff)
    await until(async () => JSON.stringify(await numsub(r2, chans)) === JSON.stringify(baseline), 4000,
      async () => `NUMSUB ${JSON.stringify(await numsub(r2, chans))}, was ${JSON.stringify(baseline)}`);
    await until(async () => (await r2.call(['PUBSUB', 'NUMPAT'])) >= 1, 4000, 'the patterns again');
    // subscribed again does not mean a second subscribe line
    for (const c of chans) await r2.call(['PUBLISH', c, `after ${c}`]);
    await until(() => streams.every((s) => s.events.length >= 2), 5000,
      () => `${streams.filter((s) => s.events.length >= 2).length}/${MANY} got it ${fmt(streams.filter((s) => s.events.length < 2))}`);
    streams.forEach((s, i) => {
      const c = chans[i % 20];
      assert.deepEqual(s.events, i % 10 === 9
        ? [`psubscribe,${c}*,1`, `pmessage,${c}*,${c},after ${c}`]
        : [`subscribe,${c},1`, `message,${c},after ${c}`]);
      assert.equal(s.done, false);
    });
  } finally {
    for (const s of streams) s.close();
  }
  const log = significantLogLines(ng.errorLog().slice(logStart)).join('\n');
  assert.match(log, /\[warn\].*lost the subscriber connection to redis:\/\/127\.0\.0\.1:\d+/);
  assert.match(log, /\[notice\].*the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0 is back/);
  assert.doesNotMatch(log, /not back in time/);
});

test('Redis down longer than redisgate_timeout (1s): each stream gets the error line and ends', async (t) => {
  const ch = `${P}:down`;
  const streams = [
    ...Array.from({ length: 10 }, () => open(ng, C, `/subscribe/${ch}`, { server: SHORT })),
    ...Array.from({ length: 5 }, () => open(ng, C, `/subscribe/${ch}/${ch}:2`, { server: SHORT })),
    ...Array.from({ length: 5 }, () => open(ng, C, `/psubscribe/${ch}*`, { server: SHORT })),
  ];
  const logStart = ng.errorLog().length;
  try {
    await until(() => streams.every((s, i) => s.events.length === (i >= 10 && i < 15 ? 2 : 1)), 5000,
      () => fmt(streams));
    const t0 = Date.now();
    r3.child.kill('SIGKILL');
    await r3.stop();
    await until(() => streams.every((s) => s.ended), 5000, () => fmt(streams.filter((s) => !s.ended)));
    const ms = Date.now() - t0;
    t.diagnostic(`the streams ended ${ms} ms after Redis went`);
    assert.ok(ms >= 900, `ended after ${ms} ms, before redisgate_timeout`);
    for (const s of streams) {
      assert.equal(s.errors.length, 1, JSON.stringify(s.events));
      assert.match(s.events.at(-1), /^error,Redis unavailable: (could not connect|connection lost)$/);
      // the error line is the last thing before the last chunk
      assert.match(s.text(), /\ndata: error,Redis unavailable: [a-z ]+\n\n$/);
      assert.equal(s.after?.length, 0);
    }
    // a new stream while Redis is away: 200 all the same, and only the
    // error line (t/160-stream.t checks that it comes at once)
    const late = open(ng, C, `/subscribe/${ch}`, { server: SHORT });
    await until(() => late.ended, 3000, () => fmt([late]));
    assert.equal(late.status, 200);
    assert.deepEqual(late.events, ['error,Redis unavailable: could not connect']);
  } finally {
    for (const s of streams) s.close();
  }
  const log = significantLogLines(ng.errorLog().slice(logStart)).join('\n');
  assert.match(log, /\[warn\].*lost the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0/);
  assert.match(log, /\[error\].*the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0 is not back in time, ending the streams/);

  // Redis back: streams work again
  await r3.start();
  const again = open(ng, C, `/subscribe/${ch}`, { server: SHORT });
  try {
    await until(() => again.subscribed, 5000, () => fmt([again]));
    await r3.call(['PUBLISH', ch, 'back']);
    await until(() => again.events.length === 2, 5000, () => fmt([again]));
    assert.deepEqual(again.events, [`subscribe,${ch},1`, `message,${ch},back`]);
  } finally {
    again.close();
  }
});

// a client that reads the headers and the subscribe line, then nothing
// (SO_RCVBUF 4096) until told on its standard input; then everything, into
// `out`, up to the last chunk
const SLOW_READER = String.raw`
use strict;
use Socket;
my ($port, $path, $out) = @ARGV;
socket(my $s, PF_INET, SOCK_STREAM, getprotobyname('tcp')) or die "socket: $!";
setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', 4096)) or die "SO_RCVBUF: $!";
connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or die "connect: $!";
syswrite($s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
my $buf = '';
while ($buf !~ /data: subscribe,/) {
    my $n = sysread($s, $buf, 4096, length $buf);
    die "closed before the subscribe line: $buf" unless $n;
}
$| = 1;
print "subscribed\n";
my $go = <STDIN>;
open(my $fh, '>', $out) or die "$out: $!";
binmode $fh;
print $fh $buf;
my $tail = $buf;
local $SIG{ALRM} = sub { print "timed out\n"; exit 1 };
alarm 20;
while ($tail !~ /\r\n0\r\n\r\n\z/) {
    my $n = sysread($s, my $chunk, 65536);
    last unless $n;
    print $fh $chunk;
    $tail = substr($tail . $chunk, -16);
}
close $fh;
print "done\n";
`;

test('a client that never reads: its stream ends with the error line, a normal reader gets every message', async (t) => {
  const ch = `${P}:slow`;
  const normal = open(ngOne, A, `/subscribe/${ch}`, { keep: false });
  // a reader that keeps up, with the same 64k buffer as the slow one
  const brisk = open(ngOne, A, `/subscribe/${ch}`, { keep: false, server: SMALL_BUFFER });
  await until(() => normal.subscribed && brisk.subscribed, 5000, () => fmt([normal, brisk]));
  const out = path.join(makeTmpDir('rg-slow-'), 'slow.out');
  const slow = spawn('perl', ['-e', SLOW_READER, String(ngOne.ports[SMALL_BUFFER]),
    `/redis/${A}/subscribe/${ch}?_token=${FULL}`, out], { stdio: ['pipe', 'pipe', 'inherit'] });
  let said = '';
  slow.stdout.on('data', (d) => { said += d; });
  const logStart = ngOne.errorLog().length;
  const N = 1280;
  const pad = 'x'.repeat(16 * 1024);
  try {
    await until(() => said.includes('subscribed'), 5000, `the slow reader subscribed: ${said}`);
    // ~20 MB, 256 KB a batch: each PUBLISH reaches the one worker
    for (let i = 0; i < N; i += 16) {
      const cmds = [];
      for (let k = i; k < i + 16; k++) cmds.push(['PUBLISH', ch, `${k}:${pad}`]);
      const replies = await redisCommands(r1.port, cmds, { ms: 10000 });
      assert.ok(replies.every((n) => n === 1), JSON.stringify(replies));
    }
    await until(() => normal.messages.length === N && brisk.messages.length === N, 15000,
      () => `normal ${normal.messages.length}, brisk ${brisk.messages.length} of ${N}: ${fmt([normal, brisk])}`);
    for (const s of [normal, brisk]) {
      assert.deepEqual(s.errors, []);
      s.messages.forEach((m, k) => {
        if (m !== `message,${ch},${k}:${pad}`) assert.fail(`message ${k}: ${m.slice(0, 60)}`);
      });
    }
    await until(() => /a stream's client reads too slowly/.test(ngOne.errorLog().slice(logStart)), 5000,
      'the log line about the slow reader');
    assert.match(ngOne.errorLog().slice(logStart),
      /\[info\].*redisgate: a stream's client reads too slowly, \d+ bytes not read, ending it/);

    // now it reads: a prefix of the messages, the error line, the last chunk
    slow.stdin.write('go\n');
    await until(() => /done|timed out/.test(said), 25000, `the slow reader drained: ${said}`);
    assert.match(said, /done/);
    const raw = readFileSync(out);
    const rest = new Sse(null);
    rest.data(raw);
    assert.equal(rest.status, 200);
    assert.equal(rest.ended, true);
    const n = rest.messages.length;
    assert.ok(n > 0 && n < N, `the slow reader got ${n} messages`);
    t.diagnostic(`the slow reader got ${n} of ${N} messages (${raw.length} bytes) before its stream ended`);
    assert.deepEqual(rest.events, [`subscribe,${ch},1`,
      ...Array.from({ length: n }, (_, k) => `message,${ch},${k}:${pad}`),
      "error,the client reads too slowly: the stream's buffer is full"]);
  } finally {
    slow.kill('SIGKILL');
    normal.close();
    brisk.close();
  }
  await until(async () => (await numsub(r1, [ch]))[ch] === 0, 5000, 'NUMSUB back to 0');
});

test('nginx -s reload: each stream gets the error line within ~2 s, the old worker exits', async (t) => {
  const ch = `${P}:reload`;
  const streams = Array.from({ length: 200 }, (_, i) => open(ngOne, A,
    i % 2 ? `/subscribe/${ch}` : `/psubscribe/${ch}*`, { keep: false }));
  try {
    await until(() => streams.every((s) => s.subscribed), 5000, () => fmt(streams));
    const old = workerPids(ngOne);
    assert.equal(old.length, 1, `workers: ${old}`);
    const t0 = Date.now();
    const r = await runProgram(NGINX_BIN, ['-p', `${ngOne.dir}/`, '-c', path.join(ngOne.dir, 'nginx.conf'),
      '-s', 'reload'], { timeoutMs: 10000 });
    assert.equal(r.code, 0, r.stderr);
    await until(() => streams.every((s) => s.ended), 3000, () => fmt(streams.filter((s) => !s.ended)));
    const ms = Date.now() - t0;
    t.diagnostic(`the streams ended ${ms} ms after the reload`);
    assert.ok(ms < 2500, `${ms} ms`);
    for (const s of streams) {
      assert.equal(s.events.at(-1), 'error,nginx is reloading or stopping', JSON.stringify(s.events));
      assert.equal(s.errors.length, 1);
    }
    await until(() => !existsSync(`/proc/${old[0]}`), 5000, `the old worker ${old[0]} exits`);
    // the new worker serves streams
    await until(() => workerPids(ngOne).length === 1, 5000, 'a new worker');
    const fresh = open(ngOne, A, `/subscribe/${ch}`);
    try {
      await until(() => fresh.subscribed, 5000, () => fmt([fresh]));
      await r1.call(['PUBLISH', ch, 'new worker']);
      await until(() => fresh.events.length === 2, 5000, () => fmt([fresh]));
      assert.deepEqual(fresh.events, [`subscribe,${ch},1`, `message,${ch},new worker`]);
    } finally {
      fresh.close();
    }
  } finally {
    for (const s of streams) s.close();
  }
});
