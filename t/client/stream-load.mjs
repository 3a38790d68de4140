// Streaming under load: N Server-Sent Event streams on one channel, M
// PUBLISHes to it, every delivery timed (PROTOCOL.md "Streaming",
// docs/api.md#streaming).
//
//   import { streamLoad } from './stream-load.mjs';
//   const r = await streamLoad({ url, instance, token, redisPort, ... });
//
//   node stream-load.mjs --url http://127.0.0.1:8080 --instance ID \
//       --redis 127.0.0.1:6379 [--streams 10000] [--messages 100] \
//       [--nginx-pid MASTER | --worker-pid PID...] [--status-url URL] \
//       [--processes 1] [--channel NAME]      (token: REDISGATE_TOKEN)
//   prints one JSON object: the result below.
//
// What it does, each step bounded in time:
//  1. reads the nginx workers' memory (/proc/<pid>/status, smaps_rollup);
//  2. opens `streams` streams, GET <url><prefix>/<instance>/subscribe/
//     <channel> with Authorization: Bearer, on raw sockets (node:net), at
//     most `openConcurrency` being opened at once, and waits until each
//     has its "data: subscribe,<channel>,1" event; in this process, or
//     shared among `processes` child processes (fork) when one node
//     process cannot read them fast enough;
//  3. once they are idle (`idleMs`), the workers' memory again: the
//     growth per stream; Redis's CLIENT LIST TYPE pubsub (the gateway's
//     subscriber connections) and the gateway's redisgate_streams gauge;
//  4. PUBLISHes `messages` messages on a connection of its own, the
//     payload "<seq>:<send time>" (process.hrtime, CLOCK_MONOTONIC, the
//     same clock in every process of the machine); one at a time: the next
//     goes `gapMs` after the previous one reached every stream (or after
//     `settleMs`), so what is timed is one PUBLISH's fan-out, not a queue
//     the load made itself;
//  5. closes every stream, then waits (`drainMs`) for the subscriber
//     connection and the gauge to go.
// Each (stream, message) pair's latency is its receive time minus the
// send time: the PUBLISH, Redis, the gateway's fan-out, the kernel and
// this client's own reading of 10,000 sockets (its event loop's delay
// is in it).
//
// Memory: the growth of the workers' RssAnon (anonymous resident pages:
// the heap nginx's pools and the module's allocations come from) from
// before the first stream to when all are idle, divided by the streams.
// VmRSS also moves with file pages (libraries paged in) and shared memory
// (the stats zone, shared by all workers), so it is reported but not
// used; Private_Dirty (smaps_rollup) is reported as a cross-check.  The
// kernel's socket buffers are in neither: they are not the worker's.

import net from 'node:net';
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { parseResp } from './harness.mjs';

const SELF = fileURLToPath(import.meta.url);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowNs = () => Number(process.hrtime.bigint());     // < 2^53 for ~104 days of uptime

// ---------------------------------------------------------------------------
// one stream: a socket, its HTTP head, the chunked body, the SSE lines

const S_HEAD = 0;
const S_SIZE = 1;
const S_DATA = 2;
const S_CRLF = 3;
const S_DONE = 4;

class Stream {
  constructor(shard, index) {
    this.shard = shard;
    this.index = index;           // in the shard: its row of latencies
    this.state = S_HEAD;
    this.text = '';               // what is not parsed yet (latin1)
    this.left = 0;                // of the current chunk
    this.line = '';               // a line not complete yet
    this.chunked = true;
    this.status = 0;
    this.subscribed = false;
    this.dead = false;            // ended, closed, failed
    this.next = 0;                // the message expected next
    this.got = 0;
    this.heartbeats = 0;
    this.sock = null;
  }

  open() {
    const sh = this.shard;
    const sock = net.connect({ port: sh.port, host: sh.host });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.write(sh.request, 'latin1');
    sock.on('data', (d) => this.data(d));
    sock.on('error', (e) => this.fail(`socket ${e.code || e.message}`));
    sock.on('close', () => this.fail('closed'));
  }

  data(d) {
    const now = nowNs();
    let s = this.text.length ? this.text + d.toString('latin1') : d.toString('latin1');
    let i = 0;
    try {
      for (;;) {
        if (this.state === S_HEAD) {
          const e = s.indexOf('\r\n\r\n', i);
          if (e < 0) break;
          this.head(s.slice(i, e));
          i = e + 4;
          if (this.dead) return;
        } else if (this.state === S_SIZE) {
          const e = s.indexOf('\r\n', i);
          if (e < 0) break;
          const size = parseInt(s.slice(i, e), 16);   // stops at ";ext"
          if (Number.isNaN(size)) throw new Error(`bad chunk size ${JSON.stringify(s.slice(i, e).slice(0, 20))}`);
          i = e + 2;
          if (size === 0) {
            this.state = S_DONE;
            this.fail(this.subscribed ? 'ended' : 'ended before subscribing');
            return;
          }
          this.left = size;
          this.state = S_DATA;
        } else if (this.state === S_DATA) {
          if (i >= s.length) break;
          const n = Math.min(this.left, s.length - i);
          this.body(s.slice(i, i + n), now);
          if (this.dead) return;
          i += n;
          this.left -= n;
          if (this.left === 0) this.state = this.chunked ? S_CRLF : S_DATA;
        } else if (this.state === S_CRLF) {
          if (s.length - i < 2) break;
          if (s.charCodeAt(i) !== 13 || s.charCodeAt(i + 1) !== 10) throw new Error('a chunk without its CRLF');
          i += 2;
          this.state = S_SIZE;
        } else {
          return;
        }
      }
    } catch (e) {
      this.shard.protocolError(this, e.message);
      return;
    }
    this.text = i < s.length ? s.slice(i) : '';
  }

  head(h) {
    const first = h.slice(0, h.indexOf('\r\n') >>> 0);
    this.status = Number(first.split(' ')[1]);
    if (this.status !== 200) {
      this.fail(`status ${this.status}`);
      return;
    }
    this.chunked = /\r\ntransfer-encoding:[ \t]*chunked/i.test(h);
    if (!this.chunked) this.left = Infinity;
    this.state = this.chunked ? S_SIZE : S_DATA;
  }

  // body text, split in lines; an event may be cut anywhere
  body(t, now) {
    let at = 0;
    let text = t;
    if (this.line.length) {
      text = this.line + t;
      this.line = '';
    }
    for (;;) {
      const e = text.indexOf('\n', at);
      if (e < 0) break;
      if (e > at) this.event(text.slice(at, e), now);
      if (this.dead) return;
      at = e + 1;
    }
    if (at < text.length) this.line = text.slice(at);
  }

  event(line, now) {
    const sh = this.shard;
    if (line.startsWith(sh.messagePrefix)) {
      // "data: message,<channel>,<seq>:<sent ns>[:<padding>]"
      const p = sh.messagePrefix.length;
      const c = line.indexOf(':', p);
      const seq = Number(line.slice(p, c));
      const c2 = line.indexOf(':', c + 1);
      const sent = Number(c2 < 0 ? line.slice(c + 1) : line.slice(c + 1, c2));
      sh.message(this, seq, sent, now);
    } else if (line === ':') {
      this.heartbeats++;
    } else if (line === sh.subscribeLine) {
      if (this.subscribed) {
        sh.protocolError(this, 'a second subscribe event');
        return;
      }
      this.subscribed = true;
      sh.subscribedOne(this);
    } else if (line.startsWith('data: error,')) {
      sh.tally(sh.errorEvents, line.slice(12));
      this.fail('error event');
    } else {
      sh.protocolError(this, `unexpected line ${JSON.stringify(line.slice(0, 80))}`);
    }
  }

  fail(why) {
    if (this.dead) return;
    this.dead = true;
    this.sock?.destroy();
    this.shard.gone(this, why);
  }

  close() {
    if (this.dead) return;
    this.dead = true;
    this.sock?.destroy();
  }
}

// ---------------------------------------------------------------------------
// a shard: the streams one process reads

class Shard {
  constructor(o) {
    this.host = o.host;
    this.port = o.port;
    this.count = o.count;
    this.messages = o.messages;
    this.concurrency = o.openConcurrency;
    this.openTimeoutMs = o.openTimeoutMs;
    this.request = `GET ${o.path} HTTP/1.1\r\nHost: ${o.host}:${o.port}\r\n` +
      (o.token ? `Authorization: Bearer ${o.token}\r\n` : '') + '\r\n';
    this.messagePrefix = `data: message,${o.channel},`;
    this.subscribeLine = `data: subscribe,${o.channel},1`;
    this.streams = [];
    this.latency = new Float64Array(o.count * o.messages).fill(NaN);
    this.received = new Int32Array(o.messages);
    this.notified = new Uint8Array(o.messages);
    this.live = 0;
    this.subscribed = 0;
    this.failures = {};           // before subscribing: why
    this.endings = {};            // after: why
    this.errorEvents = {};
    this.protocolErrors = [];
    this.outOfOrder = 0;
    this.duplicates = 0;
    this.foreign = 0;             // a seq out of range
    this.closing = false;
    this.onComplete = () => {};
  }

  tally(map, k) { map[k] = (map[k] || 0) + 1; }

  // every stream subscribed or failed, or the time is up
  open() {
    return new Promise((resolve) => {
      let started = 0;
      let settled = 0;
      const t0 = Date.now();
      const finish = () => {
        clearTimeout(timer);
        this.opening = null;
        resolve({
          subscribed: this.subscribed, failures: this.failures, ms: Date.now() - t0,
          protocolErrors: this.protocolErrors.slice(0, 5),
        });
      };
      const pump = () => {
        while (started < this.count && started - settled < this.concurrency) {
          const s = new Stream(this, started++);
          this.streams.push(s);
          s.open();
        }
      };
      // a stream subscribed, or failed before it did
      this.opening = () => {
        settled++;
        if (settled === this.count) finish();
        else pump();
      };
      const timer = setTimeout(() => {
        this.opening = null;
        for (const s of this.streams) {
          if (!s.subscribed && !s.dead) s.fail('open timeout');
        }
        const never = this.count - this.streams.length;
        if (never) this.failures['not opened in time'] = never;
        finish();
      }, this.openTimeoutMs);
      if (this.count === 0) finish();
      else pump();
    });
  }

  subscribedOne() {
    this.subscribed++;
    this.live++;
    this.opening?.();
  }

  gone(s, why) {
    if (s.subscribed) {
      this.live--;
      if (!this.closing) this.tally(this.endings, why);
      // what the others all have is complete now (all, when none is left)
      for (let k = 0; k < this.messages; k++) {
        if (!this.notified[k] && this.received[k] >= this.live) this.complete(k);
      }
    } else {
      this.tally(this.failures, why);
      this.opening?.();
    }
  }

  protocolError(s, what) {
    if (this.protocolErrors.length < 20) this.protocolErrors.push(`stream ${s.index}: ${what}`);
    s.fail('protocol error');
  }

  message(s, seq, sent, now) {
    if (!(seq >= 0 && seq < this.messages) || !Number.isFinite(sent)) {
      this.foreign++;
      return;
    }
    const at = s.index * this.messages + seq;
    if (!Number.isNaN(this.latency[at])) {
      this.duplicates++;
      return;
    }
    if (seq !== s.next) this.outOfOrder++;
    s.next = seq + 1;
    s.got++;
    this.latency[at] = (now - sent) / 1e6;
    if (++this.received[seq] >= this.live && !this.notified[seq]) this.complete(seq);
  }

  complete(seq) {
    this.notified[seq] = 1;
    this.onComplete(seq);
  }

  // close every stream; what was seen
  finish() {
    this.closing = true;
    let inOrder = 0;
    let heartbeats = 0;
    for (const s of this.streams) {
      if (s.subscribed && s.got === this.messages && s.next === this.messages) inOrder++;
      heartbeats += s.heartbeats;
      s.close();
    }
    return {
      latency: this.latency,
      summary: {
        streams: this.count, subscribed: this.subscribed, complete: inOrder,
        failures: this.failures, endings: this.endings, errorEvents: this.errorEvents,
        protocolErrors: this.protocolErrors, outOfOrder: this.outOfOrder,
        duplicates: this.duplicates, foreign: this.foreign, heartbeats,
      },
    };
  }
}

// a shard in this process
class LocalShard {
  constructor(o) { this.shard = new Shard(o); }
  set onComplete(f) { this.shard.onComplete = f; }
  open() { return this.shard.open(); }
  async finish() { return this.shard.finish(); }
  kill() { this.shard.finish(); }
}

// a shard in a child process (this file with --shard), over IPC
class ChildShard {
  constructor(o) {
    this.onComplete = () => {};
    this.waiting = new Map();
    this.child = fork(SELF, ['--shard'], { serialization: 'advanced', stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.on('message', (m) => {
      if (m.type === 'complete') this.onComplete(m.seq);
      else this.waiting.get(m.type)?.resolve(m.value);
    });
    this.child.on('exit', (code, signal) => {
      for (const w of this.waiting.values()) w.reject(new Error(`a shard process exited (${code ?? signal})`));
    });
    this.child.send({ cmd: 'init', o });
  }

  call(cmd, reply, ms) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`a shard process did not answer ${cmd} in ${ms} ms`)), ms);
      this.waiting.set(reply, {
        resolve: (v) => { clearTimeout(t); resolve(v); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      this.child.send({ cmd });
    });
  }

  open(ms) { return this.call('open', 'opened', ms); }
  finish() { return this.call('finish', 'finished', 30000); }

  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try { this.child.kill('SIGKILL'); } catch { /* gone */ }
    }
    await Promise.race([this.exited, sleep(2000)]);
  }
}

function shardMain() {
  let shard = null;
  process.on('message', async (m) => {
    if (m.cmd === 'init') {
      shard = new Shard(m.o);
      shard.onComplete = (seq) => process.send({ type: 'complete', seq });
    } else if (m.cmd === 'open') {
      process.send({ type: 'opened', value: await shard.open() });
    } else if (m.cmd === 'finish') {
      process.send({ type: 'finished', value: shard.finish() }, () => process.exit(0));
    }
  });
  process.on('disconnect', () => process.exit(0));
}

// ---------------------------------------------------------------------------
// Redis: a small RESP client (harness.mjs parses the replies)

class RedisConn {
  constructor({ host = '127.0.0.1', port, password = null, user = null }) {
    this.host = host;
    this.port = port;
    this.auth = password ? (user ? [user, password] : [password]) : null;
    this.queue = [];
    this.buf = Buffer.alloc(0);
  }

  connect(ms = 5000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.sock.destroy(); reject(new Error(`Redis ${this.port}: connect timeout`)); }, ms);
      this.sock = net.connect({ port: this.port, host: this.host }, async () => {
        clearTimeout(t);
        try {
          if (this.auth) await this.call(['AUTH', ...this.auth]);
          resolve(this);
        } catch (e) { reject(e); }
      });
      this.sock.setNoDelay(true);
      this.sock.on('data', (d) => this.data(d));
      this.sock.on('error', (e) => { clearTimeout(t); this.fail(e); reject(e); });
      this.sock.on('close', () => this.fail(new Error(`Redis ${this.port}: connection closed`)));
    });
  }

  data(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let at = 0;
    for (;;) {
      const r = parseResp(this.buf, at);
      if (!r) break;
      at = r.next;
      const w = this.queue.shift();
      if (w) w(r.value);
    }
    this.buf = this.buf.subarray(at);
  }

  fail(e) {
    for (const w of this.queue.splice(0)) w(e);
  }

  // write now (the returned time is when it went); resolves the reply
  send(args, ms = 5000) {
    const cmd = `*${args.length}\r\n` + args.map((a) => {
      const b = Buffer.from(String(a));
      return `$${b.length}\r\n${b.toString('latin1')}\r\n`;
    }).join('');
    let t;
    const reply = new Promise((resolve, reject) => {
      t = setTimeout(() => reject(new Error(`Redis ${this.port}: ${args[0]} timed out`)), ms);
      this.queue.push((v) => { clearTimeout(t); if (v instanceof Error) reject(v); else resolve(v); });
    });
    this.sock.write(cmd, 'latin1');
    return reply;
  }

  call(args, ms) { return this.send(args, ms); }

  close() { this.sock?.destroy(); }
}

// ---------------------------------------------------------------------------
// the workers: memory, CPU

// the children of an nginx master (its workers), Linux
export function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)
      .filter(Boolean).map(Number);
  } catch { return []; }
}

// kB figures of /proc/<pid>/status and smaps_rollup
export function memoryOf(pid) {
  const out = { pid };
  try {
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    for (const k of ['VmRSS', 'RssAnon', 'RssFile', 'RssShmem']) {
      const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(st);
      if (m) out[k] = Number(m[1]);
    }
  } catch { return null; }
  try {
    const sm = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    for (const k of ['Private_Dirty', 'Pss', 'Anonymous']) {
      const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(sm);
      if (m) out[k] = Number(m[1]);
    }
  } catch { /* an older kernel */ }
  return out;
}

// utime + stime of a process, in ms
function cpuMs(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;   // USER_HZ 100: 10 ms a tick
  } catch { return null; }
}
const sumCpu = (pids) => {
  const v = pids.map(cpuMs);
  return v.some((x) => x === null) ? null : v.reduce((a, b) => a + b, 0);
};

// the redisgate_streams gauge of a redisgate_status page
async function streamsGauge(statusUrl) {
  if (!statusUrl) return null;
  try {
    const res = await fetch(statusUrl, { signal: AbortSignal.timeout(3000) });
    const m = /^redisgate_streams (\d+)/m.exec(await res.text());
    return m ? Number(m[1]) : null;
  } catch { return null; }
}

// CLIENT LIST TYPE pubsub: the subscriber connections
async function pubsubClients(redis) {
  const list = await redis.call(['CLIENT', 'LIST', 'TYPE', 'pubsub']);
  return list.split('\n').map((l) => l.trim()).filter(Boolean);
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const k = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[k];
}
// counts of sorted values under each bound (ms)
function histogram(sorted) {
  const bounds = [1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 500, 1000, Infinity];
  const h = {};
  let k = 0;
  for (const b of bounds) {
    let n = 0;
    while (k < sorted.length && sorted[k] < b) { k++; n++; }
    h[b === Infinity ? '>=1000' : `<${b}`] = n;
  }
  return h;
}
const round = (x, d = 3) => (x === null || x === undefined ? null : Number(x.toFixed(d)));

// ---------------------------------------------------------------------------
// the load

/**
 * url: the gateway, http://host:port; prefix: its location (/redis);
 * instance, token; channel (default a random name); streams, messages;
 * redisHost, redisPort, redisPassword, redisUser: the Redis behind the
 * instance (PUBLISH, CLIENT LIST); workerPids (or nginxPid, a master: its
 * children); statusUrl: a redisgate_status page (the redisgate_streams
 * gauge); processes: 0 to read every stream in this process, N to share
 * them among N child processes; payloadBytes: pad each payload to this
 * size.  Timeouts: openTimeoutMs (every stream subscribed), settleMs (a
 * message reaching every stream), drainMs (after closing), and
 * totalTimeoutMs over all.  log: a function for progress lines.
 * Resolves the result (see the file's head); rejects only when the load
 * could not be run (Redis unreachable, a shard process lost).
 */
export async function streamLoad(opts) {
  const o = {
    prefix: '/redis', channel: `stream-load-${randomBytes(4).toString('hex')}`,
    streams: 10000, messages: 100, redisHost: '127.0.0.1', redisPassword: null,
    redisUser: null, workerPids: null, nginxPid: null, statusUrl: null, processes: 0,
    openConcurrency: 256, openTimeoutMs: 30000, idleMs: 300, gapMs: 20,
    minIntervalMs: 25, settleMs: 2000, drainMs: 5000, totalTimeoutMs: 120000,
    payloadBytes: 0, log: () => {}, ...opts,
  };
  const u = new URL(o.url);
  const host = u.hostname;
  const port = Number(u.port || 80);
  const path = `${u.pathname.replace(/\/$/, '')}${o.prefix}/${o.instance}/subscribe/${encodeURIComponent(o.channel)}`;
  const pids = o.workerPids ?? (o.nginxPid ? childPids(o.nginxPid) : []);
  const t0 = Date.now();
  const deadline = t0 + o.totalTimeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  const result = {
    streams: o.streams, messages: o.messages, channel: o.channel, processes: o.processes,
    workerPids: pids,
  };

  const redis = await new RedisConn({ host: o.redisHost, port: o.redisPort,
    password: o.redisPassword, user: o.redisUser }).connect();
  const shards = [];
  try {
    // 1. before
    const memBefore = pids.map(memoryOf);
    const pubsubBefore = (await pubsubClients(redis)).length;

    // 2. open, in this process or in children
    const n = Math.max(1, o.processes);
    const shardOpts = (i) => ({
      host, port, path, token: o.token, channel: o.channel, messages: o.messages,
      count: Math.floor(o.streams / n) + (i < o.streams % n ? 1 : 0),
      openConcurrency: Math.max(1, Math.ceil(o.openConcurrency / n)),
      openTimeoutMs: Math.min(o.openTimeoutMs, left()),
    });
    for (let i = 0; i < n; i++) {
      shards.push(o.processes > 0 ? new ChildShard(shardOpts(i)) : new LocalShard(shardOpts(i)));
    }
    const completions = shards.map(() => new Map());   // seq -> resolve
    const done = shards.map(() => new Set());
    shards.forEach((sh, i) => {
      sh.onComplete = (seq) => {
        done[i].add(seq);
        completions[i].get(seq)?.();
      };
    });
    const cpu0 = sumCpu(pids);
    const tOpen = Date.now();
    const opened = await Promise.all(shards.map((sh) => sh.open(Math.min(o.openTimeoutMs, left()) + 5000)));
    const cpu1 = sumCpu(pids);
    result.subscribed = opened.reduce((a, x) => a + x.subscribed, 0);
    result.openFailures = {};
    for (const x of opened) {
      for (const [k, v] of Object.entries(x.failures)) result.openFailures[k] = (result.openFailures[k] || 0) + v;
    }
    result.openMs = Date.now() - tOpen;
    o.log(`${result.subscribed}/${o.streams} streams subscribed in ${result.openMs} ms`);

    // 3. idle: memory, subscriber connections, the gauge
    await sleep(o.idleMs);
    const memIdle = pids.map(memoryOf);
    const clients = await pubsubClients(redis);
    result.pubsubConnections = clients.length;
    result.pubsubConnectionsBefore = pubsubBefore;
    // the connections subscribed to this channel: the workers' hubs
    result.channelSubscribers = Number((await redis.call(['PUBSUB', 'NUMSUB', o.channel]))[1]);
    // addr, sub, psub, cmd of each
    result.pubsubClients = clients.map((l) => l.split(' ')
      .filter((f) => /^(addr|sub|psub|cmd)=/.test(f)).join(' '));
    result.streamsGauge = { open: await streamsGauge(o.statusUrl) };
    const delta = (k) => {
      if (!pids.length) return null;
      let sum = 0;
      for (let i = 0; i < pids.length; i++) {
        if (memBefore[i]?.[k] === undefined || memIdle[i]?.[k] === undefined) return null;
        sum += memIdle[i][k] - memBefore[i][k];
      }
      return sum;
    };
    const per = (kb) => (kb === null || !result.subscribed ? null : Math.round(kb * 1024 / result.subscribed));
    result.memory = {
      method: 'growth of the workers\' RssAnon (/proc/<pid>/status) from before the first stream to all idle, per subscribed stream',
      before: memBefore, idle: memIdle,
      bytesPerIdleStream: per(delta('RssAnon')),
      vmRssBytesPerStream: per(delta('VmRSS')),
      privateDirtyBytesPerStream: per(delta('Private_Dirty')),
    };
    result.cpu = { workerMsOpening: cpu0 === null ? null : cpu1 - cpu0 };

    // 4. publish, one message at a time
    const pad = (s) => (o.payloadBytes > s.length + 1 ? `${s}:${'x'.repeat(o.payloadBytes - s.length - 1)}` : s);
    const publishReplies = [];
    const fanout = [];            // send -> the last stream has it, ms
    let incomplete = 0;
    const cpu2 = sumCpu(pids);
    const tPub = Date.now();
    let last = 0;
    // no stream to publish to: nothing to time
    for (let seq = 0; seq < (result.subscribed ? o.messages : 0); seq++) {
      if (Date.now() > deadline) throw new Error(`out of time at message ${seq}`);
      const wait = last + o.minIntervalMs - Date.now();
      if (wait > 0) await sleep(wait);
      const all = Promise.all(shards.map((sh, i) => (done[i].has(seq) ? null
        : new Promise((resolve) => completions[i].set(seq, resolve)))));
      last = Date.now();
      const sent = nowNs();
      const reply = redis.send(['PUBLISH', o.channel, pad(`${seq}:${sent}`)]);
      let timer;
      const settled = await Promise.race([
        all.then(() => true),
        new Promise((resolve) => { timer = setTimeout(() => resolve(false), o.settleMs); }),
      ]);
      clearTimeout(timer);
      const got = nowNs();
      publishReplies.push(await reply);
      if (settled) fanout.push((got - sent) / 1e6);
      else incomplete++;
      await sleep(o.gapMs);
    }
    const cpu3 = sumCpu(pids);
    result.publishMs = Date.now() - tPub;
    result.publishReceivers = publishReplies.length
      ? { min: Math.min(...publishReplies), max: Math.max(...publishReplies) } : null;
    result.messagesNotEverywhere = result.subscribed ? incomplete : o.messages;
    o.log(`${o.messages} messages published in ${result.publishMs} ms`);

    // 5. close, gather
    const finished = await Promise.all(shards.map((sh) => sh.finish()));
    const tClose = Date.now();
    const sums = finished.map((f) => f.summary);
    const add = (k) => sums.reduce((a, s) => a + s[k], 0);
    const merge = (k) => {
      const m = {};
      for (const s of sums) for (const [x, v] of Object.entries(s[k])) m[x] = (m[x] || 0) + v;
      return m;
    };
    let delivered = 0;
    for (const f of finished) for (const v of f.latency) if (!Number.isNaN(v)) delivered++;
    const lat = new Float64Array(delivered);
    let j = 0;
    for (const f of finished) for (const v of f.latency) if (!Number.isNaN(v)) lat[j++] = v;
    lat.sort();
    fanout.sort((a, b) => a - b);
    const expected = o.streams * o.messages;
    Object.assign(result, {
      expected, delivered, missing: expected - delivered,
      complete: add('complete'), outOfOrder: add('outOfOrder'), duplicates: add('duplicates'),
      foreign: add('foreign'), heartbeats: add('heartbeats'),
      endedEarly: merge('endings'), errorEvents: merge('errorEvents'),
      protocolErrors: sums.flatMap((s) => s.protocolErrors).slice(0, 10),
      latencyMs: {
        p50: round(percentile(lat, 0.5)), p90: round(percentile(lat, 0.9)),
        p99: round(percentile(lat, 0.99)), p999: round(percentile(lat, 0.999)),
        max: round(lat.length ? lat[lat.length - 1] : null),
        mean: round(lat.length ? lat.reduce((a, b) => a + b, 0) / lat.length : null),
      },
      // deliveries by latency: "<upper bound in ms>": count
      latencyHistogram: histogram(lat),
      fanoutMs: {
        p50: round(percentile(fanout, 0.5)), p99: round(percentile(fanout, 0.99)),
        max: round(fanout.length ? fanout[fanout.length - 1] : null),
      },
    });
    result.cpu.workerMsPublishing = cpu2 === null ? null : cpu3 - cpu2;
    result.cpu.workerUsPerDelivery = cpu2 === null || !delivered ? null
      : round((cpu3 - cpu2) * 1000 / delivered);
    result.cpu.workerUsPerOpen = cpu0 === null || !result.subscribed ? null
      : round((cpu1 - cpu0) * 1000 / result.subscribed);

    // after closing: the subscriber connection goes, the gauge to 0
    let after = null;
    let gauge = null;
    const drainEnd = Date.now() + Math.min(o.drainMs, left());
    for (;;) {
      after = (await pubsubClients(redis)).length;
      gauge = await streamsGauge(o.statusUrl);
      if ((after <= pubsubBefore && (gauge === null || gauge === 0)) || Date.now() > drainEnd) break;
      await sleep(50);
    }
    result.pubsubConnectionsAfterClose = after;
    result.streamsGauge.afterClose = gauge;
    result.closeMs = Date.now() - tClose;
    result.wallMs = Date.now() - t0;
    return result;
  } finally {
    redis.close();
    await Promise.all(shards.map((sh) => sh.kill()));
  }
}

// ---------------------------------------------------------------------------
// the command line

function cli(argv) {
  const o = { token: process.env.REDISGATE_TOKEN, log: (l) => process.stderr.write(`# ${l}\n`) };
  const pids = [];
  const num = (v) => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`not a number: ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--url': o.url = v(); break;
      case '--prefix': o.prefix = v(); break;
      case '--instance': o.instance = v(); break;
      case '--token': o.token = v(); break;
      case '--channel': o.channel = v(); break;
      case '--streams': o.streams = num(v()); break;
      case '--messages': o.messages = num(v()); break;
      case '--redis': {
        const [h, p] = v().split(':');
        o.redisHost = h || '127.0.0.1';
        o.redisPort = num(p);
        break;
      }
      case '--worker-pid': pids.push(num(v())); break;
      case '--nginx-pid': o.nginxPid = num(v()); break;
      case '--status-url': o.statusUrl = v(); break;
      case '--processes': o.processes = num(v()); break;
      case '--concurrency': o.openConcurrency = num(v()); break;
      case '--gap-ms': o.gapMs = num(v()); break;
      case '--min-interval-ms': o.minIntervalMs = num(v()); break;
      case '--payload-bytes': o.payloadBytes = num(v()); break;
      case '--timeout-ms': o.totalTimeoutMs = num(v()); break;
      case '--quiet': o.log = () => {}; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  o.redisPassword = process.env.REDIS_PASSWORD || null;
  if (pids.length) o.workerPids = pids;
  if (!o.url || !o.instance || !o.redisPort) {
    throw new Error('usage: stream-load.mjs --url http://HOST:PORT --instance ID --redis HOST:PORT ' +
      '[--streams N] [--messages M] [--nginx-pid PID | --worker-pid PID...] [--status-url URL] ' +
      '[--processes N] [--channel NAME] [--payload-bytes N] (the token: REDISGATE_TOKEN or --token)');
  }
  return o;
}

if (process.argv[1] === SELF) {
  if (process.argv[2] === '--shard') {
    shardMain();
  } else {
    let o;
    try {
      o = cli(process.argv.slice(2));
    } catch (e) {
      process.stderr.write(`stream-load: ${e.message}\n`);
      process.exit(2);
    }
    streamLoad(o).then((r) => {
      process.stdout.write(JSON.stringify(r) + '\n');
      process.exit(0);
    }, (e) => {
      process.stderr.write(`stream-load: ${e.stack || e}\n`);
      process.exit(1);
    });
  }
}
