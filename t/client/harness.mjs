// Test harness for the RedisGate client suites.
//
// Starts its own redis-server(s) and its own nginx (with the RedisGate module
// loaded) on free ports, in fresh temporary directories.  Every process it
// starts is tracked by pid and stopped in after() hooks and, as a last
// resort, from a process 'exit' handler.  It never signals a process it did
// not start.
//
// Environment:
//   NGINX_BIN         nginx binary           (default /usr/sbin/nginx)
//   REDISGATE_MODULE  the module .so         (default <repo>/build/ngx_http_redisgate_module.so)
//   REDIS_SERVER_BIN  redis-server binary    (default redis-server from PATH)
//   KEEP_TMP=1        keep temporary directories (for debugging)

import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');
export const NGINX_BIN = process.env.NGINX_BIN || '/usr/sbin/nginx';
export const REDISGATE_MODULE = path.resolve(
  process.env.REDISGATE_MODULE || path.join(REPO_ROOT, 'build', 'ngx_http_redisgate_module.so'));
export const REDIS_SERVER_BIN = process.env.REDIS_SERVER_BIN || 'redis-server';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// process tracking

const tracked = new Map();   // pid -> { child, name }
const tmpDirs = new Set();
const pgClusters = new Set(); // PgCluster instances still running

function track(child, name) {
  tracked.set(child.pid, { child, name });
  child.once('exit', () => tracked.delete(child.pid));
}

process.once('exit', () => {
  // synchronous last resort: only the pids we spawned and that are still
  // running.  SIGTERM for nginx lets the master stop its own worker.
  for (const [pid, { child }] of tracked) {
    if (child.exitCode === null && child.signalCode === null) {
      try { process.kill(pid, 'SIGTERM'); } catch { /* already gone */ }
    }
  }
  // our PostgreSQL clusters (daemonized by pg_ctl, so not in `tracked`):
  // stopped synchronously, each by its own data directory
  for (const pg of pgClusters) pg.stopSync();
  if (!process.env.KEEP_TMP) {
    for (const d of tmpDirs) {
      try { rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ }
    }
  }
});

// A signal would end node without 'exit': turn it into an exit so the
// handler above stops our processes.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[sig]));
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child, ms) {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => { child.off('exit', onExit); resolve(false); }, ms);
    const onExit = () => { clearTimeout(t); resolve(true); };
    child.once('exit', onExit);
  });
}

async function stopChild(child, signal = 'SIGTERM', ms = 5000) {
  if (!child || exited(child)) return;
  try { child.kill(signal); } catch { /* gone */ }
  if (await waitExit(child, ms)) return;
  try { child.kill('SIGKILL'); } catch { /* gone */ }
  await waitExit(child, 2000);
}

export function makeTmpDir(prefix) {
  const d = mkdtempSync(path.join(tmpdir(), prefix));
  tmpDirs.add(d);
  return d;
}

// ---------------------------------------------------------------------------
// ports, tokens

// The kernel's ephemeral ports (ip_local_port_range) are also those it
// gives outgoing connections: a port picked there could be taken by any
// client socket (of the suites running beside this one) between its pick
// and its server's bind.  Ports are picked below that range instead.
const EPHEMERAL_LOW = (() => {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return low > 12000 ? low : 32768;
  } catch { return 32768; }
})();

function canListen(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export async function freePort() {
  for (let i = 0; i < 100; i++) {
    const port = 10000 + Math.floor(Math.random() * (EPHEMERAL_LOW - 10000));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port between 10000 and ${EPHEMERAL_LOW}`);
}

export function newToken() {
  return 'rg_' + randomBytes(24).toString('base64url');
}

export function sha256Hex(s) {
  return createHash('sha256').update(s).digest('hex');
}

export { randomUUID };

// Send one inline command over raw TCP (over TLS with tlsOptions: those of
// tls.connect) and resolve with the first reply line (or reject on
// error/timeout).
function rawCommand(port, line, ms = 500, tlsOptions = null) {
  return new Promise((resolve, reject) => {
    const sock = tlsOptions
      ? tls.connect({ port, host: '127.0.0.1', ...tlsOptions })
      : net.connect({ port, host: '127.0.0.1' });
    let buf = '';
    const done = (err, val) => {
      clearTimeout(t);
      sock.destroy();
      if (err) reject(err); else resolve(val);
    };
    const t = setTimeout(() => done(new Error('timeout')), ms);
    sock.on(tlsOptions ? 'secureConnect' : 'connect', () => sock.write(line + '\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      const i = buf.indexOf('\r\n');
      if (i >= 0) done(null, buf.slice(0, i));
    });
    sock.on('error', (e) => done(e));
  });
}

function canConnect(port, ms = 300) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const t = setTimeout(() => { sock.destroy(); resolve(false); }, ms);
    sock.on('connect', () => { clearTimeout(t); sock.destroy(); resolve(true); });
    sock.on('error', () => { clearTimeout(t); resolve(false); });
  });
}

// ---------------------------------------------------------------------------
// certificates

let certs = null;

/**
 * The test certificates (tools/gen-test-certs), made once per process in a
 * temporary directory: { dir, file(name) } where file('ca.crt') is a path.
 * ca.crt/key is the test CA; server (IP:127.0.0.1, DNS:localhost), expired,
 * wrongname (DNS:other.example) and client are signed by it; other-ca
 * signed nothing.
 */
export function testCerts() {
  if (!certs) {
    const dir = makeTmpDir('rg-certs-');
    const r = spawnSync(path.join(REPO_ROOT, 'tools', 'gen-test-certs'), [dir],
      { encoding: 'utf8', timeout: 30000 });
    if (r.status !== 0) throw new Error(`tools/gen-test-certs failed: ${r.stderr}`);
    certs = { dir, file: (name) => path.join(dir, name) };
  }
  return certs;
}

// ---------------------------------------------------------------------------
// redis

export class RedisServer {
  // tls: null (plain TCP), or { cert } to speak only TLS, serving the test
  // certificate named cert (default 'server'; see testCerts)
  constructor(port, dir, extraArgs = [], tls = null) {
    this.port = port;
    this.dir = dir;
    this.extraArgs = extraArgs;
    this.tls = tls;
    this.child = null;
  }

  get url() { return `${this.tls ? 'rediss' : 'redis'}://127.0.0.1:${this.port}`; }

  // redis-server's options for where it listens
  listenArgs() {
    if (!this.tls) return ['--port', String(this.port)];
    const c = testCerts();
    const cert = this.tls.cert || 'server';
    return ['--port', '0', '--tls-port', String(this.port),
      '--tls-cert-file', c.file(`${cert}.crt`), '--tls-key-file', c.file(`${cert}.key`),
      '--tls-ca-cert-file', c.file('ca.crt'), '--tls-auth-clients', 'no'];
  }

  // tls.connect options for our own commands: the test CA, and the client
  // certificate for a server that asks for one
  tlsOptions() {
    if (!this.tls) return null;
    const c = testCerts();
    return {
      ca: readFileSync(c.file('ca.crt')),
      cert: readFileSync(c.file('client.crt')),
      key: readFileSync(c.file('client.key')),
      // expired or wrongname certificates are what a test is about; our
      // own setup commands need not check them
      rejectUnauthorized: (this.tls.cert || 'server') === 'server',
    };
  }
  get pid() { return this.child?.pid; }
  get running() { return !!this.child && !exited(this.child); }

  // redis-server's command line
  args() {
    return [
      ...this.listenArgs(), '--bind', '127.0.0.1',
      '--save', '', '--appendonly', 'no', '--dir', this.dir,
      '--daemonize', 'no', ...this.extraArgs,
    ];
  }

  async start(timeoutMs = 10000) {
    if (this.running) return;
    const logFd = openSync(path.join(this.dir, 'redis.log'), 'a');
    const child = spawn(REDIS_SERVER_BIN, this.args(),
      { cwd: this.dir, stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    track(child, `redis:${this.port}`);
    this.child = child;
    let spawnErr = null;
    child.once('error', (e) => { spawnErr = e; });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (spawnErr) throw spawnErr;
      if (exited(child)) {
        throw new Error(`redis-server on ${this.port} exited early:\n` + this.log());
      }
      try {
        const reply = await rawCommand(this.port, 'PING', 500, this.tlsOptions());
        // -NOAUTH: up, but protected by --requirepass
        if (reply === '+PONG' || reply.startsWith('-NOAUTH')) return;
      } catch { /* not yet */ }
      await sleep(25);
    }
    await stopChild(child, 'SIGKILL');
    throw new Error(`redis-server on ${this.port} did not accept connections in ${timeoutMs} ms`);
  }

  // Stop it (SIGTERM, then SIGKILL).  The port is free again afterwards.
  async stop() {
    const child = this.child;
    if (!child) return;
    await stopChild(child, 'SIGTERM', 5000);
    this.child = null;
  }

  // Same port, fresh process; resolves once it answers PING.
  async restart() {
    await this.stop();
    await this.start();
  }

  // Run one inline command directly against Redis (test setup/inspection).
  command(line) { return rawCommand(this.port, line, 2000, this.tlsOptions()); }

  // One command (an array of words) with its whole reply parsed (redisCall);
  // opts.auth defaults to this.auth ({ password, user? }, or null).
  call(args, opts = {}) {
    return redisCall(this.port, args, { auth: this.auth ?? null, tlsOptions: this.tlsOptions(), ...opts });
  }

  log() {
    try { return readFileSync(path.join(this.dir, 'redis.log'), 'utf8'); } catch { return ''; }
  }
}

// extraArgs: more redis-server options, e.g. ['--requirepass', 'pw'];
// tls: see RedisServer (startRedisTls below)
export async function startRedis(extraArgs = [], tls = null) {
  const dir = makeTmpDir('rg-redis-');
  const srv = new RedisServer(await freePort(), dir, extraArgs, tls);
  await srv.start();
  return srv;
}

// A redis-server that speaks only TLS (url: rediss://127.0.0.1:PORT), with
// the test certificate named cert (testCerts); clients need no certificate
// unless extraArgs say --tls-auth-clients yes.
export function startRedisTls(extraArgs = [], { cert = 'server' } = {}) {
  return startRedis(extraArgs, { cert });
}

// ---------------------------------------------------------------------------
// RESP: whole replies, for commands that answer more than one line

// An error reply of Redis (its text is the message).
export class RedisReplyError extends Error {}

// One RESP2 reply at buf[i]: { value, next }, or null while incomplete.
// Errors become RedisReplyError values; bulk strings are latin1 strings.
// (A command a client sends is an array of bulk strings: parsed the same.)
export function parseResp(buf, i) {
  const eol = buf.indexOf('\r\n', i, 'latin1');
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[i]);
  const line = buf.toString('latin1', i + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+': return { value: line, next };
    case '-': return { value: new RedisReplyError(line), next };
    case ':': return { value: Number(line), next };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString('latin1', next, next + n), next: next + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      const items = [];
      let at = next;
      for (let k = 0; k < n; k++) {
        const r = parseResp(buf, at);
        if (!r) return null;
        items.push(r.value);
        at = r.next;
      }
      return { value: items, next: at };
    }
    default: throw new Error(`not RESP: ${JSON.stringify(buf.toString('latin1', i, i + 40))}`);
  }
}

function encodeCommand(args) {
  return `*${args.length}\r\n` + args.map((a) => {
    const b = Buffer.from(String(a));
    return `$${b.length}\r\n${b.toString('latin1')}\r\n`;
  }).join('');
}

/**
 * Send commands (each an array of words) on one fresh connection to
 * 127.0.0.1:port and resolve with their replies, in order (error replies as
 * RedisReplyError values).  auth: { password, user? } sends AUTH first (its
 * reply is checked, not returned).  Rejects on a refused connection, a
 * closed one, or after ms.
 */
export function redisCommands(port, commands, { auth = null, ms = 2000, tlsOptions = null } = {}) {
  const all = auth
    ? [auth.user ? ['AUTH', auth.user, auth.password] : ['AUTH', auth.password], ...commands]
    : commands;
  return new Promise((resolve, reject) => {
    const sock = tlsOptions
      ? tls.connect({ port, host: '127.0.0.1', ...tlsOptions })
      : net.connect({ port, host: '127.0.0.1' });
    let buf = Buffer.alloc(0);
    const replies = [];
    let at = 0;
    const done = (err, val) => {
      clearTimeout(t);
      sock.destroy();
      if (err) reject(err); else resolve(val);
    };
    const t = setTimeout(() => done(new Error(`timeout: ${all.map((c) => c[0]).join(',')} on ${port}`)), ms);
    sock.on(tlsOptions ? 'secureConnect' : 'connect', () => sock.write(all.map(encodeCommand).join(''), 'latin1'));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      try {
        for (;;) {
          const r = parseResp(buf, at);
          if (!r) break;
          replies.push(r.value);
          at = r.next;
        }
      } catch (e) { done(e); return; }
      if (replies.length === all.length) {
        if (auth) {
          const a = replies.shift();
          if (a instanceof RedisReplyError) { done(new RedisReplyError(`AUTH: ${a.message}`)); return; }
        }
        done(null, replies);
      }
    });
    sock.on('error', (e) => done(e));
    sock.on('close', () => done(new Error(`connection to ${port} closed after ${replies.length} replies`)));
  });
}

/** One command: resolves its reply, rejects with a RedisReplyError for an error reply. */
export async function redisCall(port, args, opts = {}) {
  const [r] = await redisCommands(port, [args], opts);
  if (r instanceof RedisReplyError) throw r;
  return r;
}

// ---------------------------------------------------------------------------
// redis sentinel

/**
 * A Redis Sentinel: `redis-server <dir>/sentinel.conf --sentinel`, with a
 * configuration file of its own (Sentinel rewrites it).  lines: the file
 * (where it listens, bind and dir are added here).  tls: as RedisServer's
 * (it then speaks only TLS, and TLS to the servers it watches too:
 * tls-replication yes).  stop/start/restart as RedisServer; its log is
 * redis.log in dir.
 */
export class Sentinel extends RedisServer {
  constructor(port, dir, lines, tls = null) {
    super(port, dir, [], tls);
    this.confFile = path.join(dir, 'sentinel.conf');
    // RedisServer's options for where it listens, as lines of the file
    const listen = this.listenArgs();
    const listenLines = [];
    for (let i = 0; i < listen.length; i += 2) listenLines.push(`${listen[i].slice(2)} ${listen[i + 1]}`);
    if (tls) listenLines.push('tls-replication yes');
    writeFileSync(this.confFile, [
      ...listenLines, 'bind 127.0.0.1', `dir ${dir}`, ...lines,
    ].join('\n') + '\n');
  }

  args() { return [this.confFile, '--sentinel']; }

  get address() { return `127.0.0.1:${this.port}`; }
}

/**
 * A Sentinel on a free port watching the primary 127.0.0.1:masterPort as
 * `name`.  conf: more lines for its file (requirepass, sentinel auth-pass
 * NAME pw, ...).  auth: how our own commands authenticate to it.  tls:
 * true for a sentinel that speaks only TLS, to its clients and to the
 * servers it watches (the test certificates: see startRedisTls).
 */
export async function startSentinel({ masterPort, name = 'mymaster', quorum = 2,
  downAfterMs = 1000, failoverTimeoutMs = 3000, conf = [], auth = null, tls = false }) {
  const dir = makeTmpDir('rg-sentinel-');
  const s = new Sentinel(await freePort(), dir, [
    `sentinel monitor ${name} 127.0.0.1 ${masterPort} ${quorum}`,
    `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
    `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
    `sentinel parallel-syncs ${name} 1`,
    ...conf,
  ], tls ? { cert: 'server' } : null);
  s.auth = auth;
  await s.start();
  return s;
}

// The http-level directive that makes nginx trust the test CA.
export function trustTestCa() {
  return `redisgate_ssl_trusted_certificate ${testCerts().file('ca.crt')};`;
}

// ---------------------------------------------------------------------------
// redis cluster

// CRC16 (XMODEM: polynomial 0x1021, initial value 0), by table
const CRC16_TABLE = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = (c & 0x8000) ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    table[i] = c;
  }
  return table;
})();

function crc16(bytes) {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ b) & 0xff];
  return crc;
}

/**
 * A key's hash slot (0..16383), as Redis Cluster computes it: CRC16 of
 * the key, or of the text between the first '{' and the next '}' when
 * that text is not empty (a hash tag).
 */
export function keySlot(key) {
  const b = Buffer.from(key);
  const open = b.indexOf('{');
  if (open >= 0) {
    const close = b.indexOf('}', open + 1);
    if (close > open + 1) return crc16(b.subarray(open + 1, close)) % 16384;
  }
  return crc16(b) % 16384;
}

/**
 * A line of CLUSTER NODES as an object: { id, port, flags: [..], master
 * (the primary's id, or null), link, slots: [[from, to], ...], migrating:
 * { slot: id }, importing: { slot: id }, myself, primary, failed }.
 */
export function parseClusterNode(line) {
  const f = line.trim().split(' ');
  const flags = f[2].split(',');
  const node = {
    id: f[0],
    port: Number(/:(\d+)@/.exec(f[1])?.[1]),
    flags,
    master: f[3] === '-' ? null : f[3],
    link: f[7],
    slots: [],
    migrating: {},
    importing: {},
    myself: flags.includes('myself'),
    primary: flags.includes('master'),
    failed: flags.includes('fail') || flags.includes('fail?'),
  };
  for (const s of f.slice(8)) {
    let m;
    if ((m = /^\[(\d+)->-(\w+)\]$/.exec(s))) node.migrating[m[1]] = m[2];
    else if ((m = /^\[(\d+)-<-(\w+)\]$/.exec(s))) node.importing[m[1]] = m[2];
    else if ((m = /^(\d+)-(\d+)$/.exec(s))) node.slots.push([Number(m[1]), Number(m[2])]);
    else if (/^\d+$/.test(s)) node.slots.push([Number(s), Number(s)]);
  }
  return node;
}

/**
 * A Redis Cluster of RedisServers started here (startCluster).  servers:
 * every node, in the order they were given to redis-cli --cluster create
 * (the first `primaries` of them became the primaries).  password: the
 * nodes' requirepass (and masterauth), or null.  tls: they speak only TLS
 * (the test certificates), between themselves too.
 */
export class RedisCluster {
  constructor(servers, { password = null, tls = false } = {}) {
    this.servers = servers;
    this.password = password;
    this.tls = tls;
  }

  // "127.0.0.1:P1,127.0.0.1:P2,..." of these servers (default: all)
  hosts(servers = this.servers) { return servers.map((s) => `127.0.0.1:${s.port}`).join(','); }

  // a redis[s]-cluster:// URL with these seeds; password: the URL's
  // (default the cluster's; '' for none)
  url({ servers = this.servers, password = this.password } = {}) {
    return `${this.tls ? 'rediss' : 'redis'}-cluster://` +
      (password ? `:${encodeURIComponent(password)}@` : '') + this.hosts(servers);
  }

  server(port) { return this.servers.find((s) => s.port === Number(port)); }

  // the servers that run, or throws
  live() {
    const l = this.servers.filter((s) => s.running);
    if (!l.length) throw new Error('no node of the cluster runs');
    return l;
  }

  // CLUSTER NODES as seen by `via` (a RedisServer; default the first that runs)
  async nodes(via = this.live()[0]) {
    const text = await via.call(['CLUSTER', 'NODES']);
    return text.split('\n').filter((l) => l.trim()).map(parseClusterNode);
  }

  // the primaries that serve slots, as `via` sees them: [{ id, port, slots, server }]
  async primaries(via) {
    return (await this.nodes(via)).filter((n) => n.primary && !n.failed && n.slots.length)
      .map((n) => ({ ...n, server: this.server(n.port) }));
  }

  /**
   * Which primary serves each slot, as `via` sees it: a function slot ->
   * RedisServer (CLUSTER SLOTS), with .ports (every primary's port).
   */
  async slotMap(via = this.live()[0]) {
    const ranges = await via.call(['CLUSTER', 'SLOTS']);
    const owner = new Array(16384).fill(null);
    for (const [from, to, [, port]] of ranges) {
      for (let s = from; s <= to; s++) owner[s] = Number(port);
    }
    const map = (slot) => this.server(owner[slot]);
    map.port = (slot) => owner[slot];
    map.ports = [...new Set(owner.filter(Boolean))].sort((a, b) => a - b);
    return map;
  }

  // the RedisServer that serves key (a fresh CLUSTER SLOTS)
  async serverOf(key) { return (await this.slotMap())(keySlot(key)); }

  /**
   * redis-cli with ARGS (bounded in time), with the password (REDISCLI_AUTH,
   * never on the command line) and the test certificates for TLS.
   * Resolves runProgram()'s { code, stdout, stderr }.
   */
  cli(args, { timeoutMs = 120000 } = {}) {
    const env = { ...process.env };
    if (this.password) env.REDISCLI_AUTH = this.password;
    const tlsArgs = [];
    if (this.tls) {
      const c = testCerts();
      tlsArgs.push('--tls', '--cacert', c.file('ca.crt'), '--cert', c.file('client.crt'),
        '--key', c.file('client.key'));
    }
    return runProgram('redis-cli', [...tlsArgs, ...args], { env, timeoutMs });
  }

  /**
   * Every running node agrees: `primaries` primaries serve all 16384 slots,
   * `replicas` replicas each, every link is up, no node is failed or in a
   * handshake, and each replica's replication link is up.  Resolves true,
   * or false after ms.
   */
  async waitHealthy({ primaries, replicas = 0, ms = 30000 } = {}) {
    const expect = primaries * (1 + replicas);
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (await this.healthy(primaries, expect).catch(() => false)) return true;
      await sleep(50);
    }
    return false;
  }

  async healthy(primaries, total) {
    for (const srv of this.live()) {
      const info = await srv.call(['CLUSTER', 'INFO']);
      if (!/cluster_state:ok/.test(info) || !/cluster_slots_ok:16384/.test(info)) return false;
      const nodes = await this.nodes(srv);
      if (nodes.length !== total) return false;
      if (nodes.some((n) => n.failed || n.flags.includes('handshake') || n.flags.includes('noaddr')
          || (!n.myself && n.link !== 'connected'))) return false;
      const prim = nodes.filter((n) => n.primary && n.slots.length);
      if (prim.length !== primaries) return false;
      const reps = nodes.filter((n) => !n.primary);
      if (reps.length !== total - primaries || reps.some((r) => !prim.some((p) => p.id === r.master))) return false;
      const me = nodes.find((n) => n.myself);
      if (!me.primary && !/master_link_status:up/.test(await srv.call(['INFO', 'replication']))) return false;
    }
    return true;
  }

  async stop() { await Promise.all(this.servers.map((s) => s.stop())); }
}

/**
 * A Redis Cluster on free ports, each node a RedisServer (--cluster-enabled,
 * its cluster bus on a free port of its own), made with redis-cli --cluster
 * create: `primaries` primaries (the first servers) with `replicas`
 * replicas each, and waited for until every node agrees (waitHealthy).
 * nodeTimeoutMs: cluster-node-timeout.  password: requirepass and
 * masterauth of every node (redis-cli and call() use it).  tls: every node
 * speaks only TLS (startRedisTls), on its cluster bus and to its primary
 * too.  extraArgs: more redis-server options for each node.
 */
export async function startCluster({ primaries = 3, replicas = 0, nodeTimeoutMs = 2000,
  password = null, tls: withTls = false, extraArgs = [] } = {}) {
  const n = primaries * (1 + replicas);
  const servers = [];
  const cluster = new RedisCluster(servers, { password, tls: withTls });
  try {
    for (let i = 0; i < n; i++) {
      const args = ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
        '--cluster-node-timeout', String(nodeTimeoutMs), '--cluster-port', String(await freePort()),
        '--repl-diskless-sync-delay', '0', '--repl-diskless-sync', 'yes'];
      if (password) args.push('--requirepass', password, '--masterauth', password);
      if (withTls) {
        // the cluster bus asks for a client certificate, always: server.crt
        // is for servers only
        const c = testCerts();
        args.push('--tls-cluster', 'yes', '--tls-replication', 'yes',
          '--tls-client-cert-file', c.file('client.crt'), '--tls-client-key-file', c.file('client.key'));
      }
      const srv = new RedisServer(await freePort(), makeTmpDir('rg-cluster-'), [...args, ...extraArgs],
        withTls ? { cert: 'server' } : null);
      if (password) srv.auth = { password };
      servers.push(srv);
    }
    await Promise.all(servers.map((s) => s.start()));
    const r = await cluster.cli(['--cluster', 'create', ...servers.map((s) => `127.0.0.1:${s.port}`),
      '--cluster-replicas', String(replicas), '--cluster-yes'], { timeoutMs: 60000 });
    if (r.code !== 0) throw new Error(`redis-cli --cluster create failed (${r.code}):\n${r.stdout}${r.stderr}`);
    if (!(await cluster.waitHealthy({ primaries, replicas }))) {
      throw new Error('the cluster did not become healthy in 30 s:\n' +
        (await Promise.all(servers.map((s) => s.call(['CLUSTER', 'NODES']).catch((e) => String(e))))).join('\n'));
    }
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

// ---------------------------------------------------------------------------
// nginx

/**
 * instances: [{ uuid, url, organization? }]  (default none)
 * keys:      [{ token, id?, scopes?, organization? }]  (token is hashed here;
 *            default none)
 * workers:   worker_processes (default 1)
 * http:      extra directives at http level (string)
 * location:  extra directives inside `location /redis/` (string)
 * logLevel:  of error.log (default debug; long load runs would write GBs)
 * workerConnections: events { worker_connections } (default 1024)
 * servers:   optional list of { location } for more server blocks on their
 *            own ports (same instances/keys, different per-location
 *            directives, e.g. a shorter redisgate_timeout); their bases are
 *            in nginx.bases[1..]
 */
export async function startNginx({ instances = [], keys = [], http = '', location = '', servers = [], locations = [], workers = 1, timeoutMs = 10000, logLevel = 'debug', workerConnections = 1024 }) {
  if (!existsSync(REDISGATE_MODULE)) {
    throw new Error(`module not found at ${REDISGATE_MODULE} (run make, or set REDISGATE_MODULE)`);
  }
  const dir = makeTmpDir('rg-nginx-');
  mkdirSync(path.join(dir, 'logs'));
  const allServers = [{ location }, ...servers];
  const ports = [];
  for (let i = 0; i < allServers.length; i++) ports.push(await freePort());
  const port = ports[0];
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

  const lines = [];
  // Load a private copy: a concurrent `make` rewriting the .so in place would
  // otherwise crash the running workers (SIGSEGV in remapped pages).
  const moduleCopy = path.join(dir, path.basename(REDISGATE_MODULE));
  copyFileSync(REDISGATE_MODULE, moduleCopy);
  lines.push(`load_module ${moduleCopy};`);
  if (isRoot) lines.push('user root root;');
  lines.push(`worker_processes ${workers};`);
  lines.push(`pid ${dir}/nginx.pid;`);
  lines.push(`error_log ${dir}/error.log ${logLevel};`);
  lines.push(`events { worker_connections ${workerConnections}; }`);
  lines.push('http {');
  lines.push(`  access_log ${dir}/access.log;`);
  for (const t of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) {
    lines.push(`  ${t}_temp_path ${dir}/${t}_temp;`);
  }
  lines.push('  client_max_body_size 16m;');
  for (const inst of instances) {
    lines.push(`  redisgate_instance ${inst.uuid} ${inst.url}` +
      (inst.organization ? ` organization=${inst.organization}` : '') + ';');
  }
  for (const k of keys) {
    lines.push(`  redisgate_key sha256:${sha256Hex(k.token)}` +
      (k.id ? ` id=${k.id}` : '') +
      (k.organization ? ` organization=${k.organization}` : '') +
      (k.scopes ? ` scopes=${k.scopes}` : '') + ';');
  }
  if (http) lines.push(http.split('\n').map((l) => '  ' + l).join('\n'));
  allServers.forEach((srv, i) => {
    lines.push('  server {');
    lines.push(`    listen 127.0.0.1:${ports[i]};`);
    lines.push('    location /redis/ {');
    lines.push('      redisgate;');
    if (srv.location) lines.push(srv.location.split('\n').map((l) => '      ' + l).join('\n'));
    lines.push('    }');
    // other locations of the first server (the management API, files)
    if (i === 0) for (const l of locations) lines.push(`    ${l}`);
    lines.push('  }');
  });
  lines.push('}');
  const conf = path.join(dir, 'nginx.conf');
  writeFileSync(conf, lines.join('\n') + '\n');

  const outFd = openSync(path.join(dir, 'stderr.log'), 'a');
  const child = spawn(NGINX_BIN, ['-p', dir + '/', '-c', conf,
    '-g', 'daemon off; master_process on;'],
  { cwd: dir, stdio: ['ignore', outFd, outFd] });
  closeSync(outFd);
  track(child, `nginx:${port}`);
  let spawnErr = null;
  child.once('error', (e) => { spawnErr = e; });

  const ng = new Nginx(child, dir, ports);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (spawnErr) throw spawnErr;
    if (exited(child)) {
      throw new Error(`nginx exited early (code ${child.exitCode}):\n` +
        ng.read('stderr.log') + '\n' + ng.errorLog().split('\n').filter((l) => !l.includes('[debug]')).join('\n'));
    }
    if ((await Promise.all(ports.map((p) => canConnect(p)))).every(Boolean)) break;
    if (Date.now() > deadline) {
      await stopChild(child, 'SIGKILL');
      throw new Error(`nginx did not listen on ${port} in ${timeoutMs} ms`);
    }
    await sleep(25);
  }
  return ng;
}

export class Nginx {
  constructor(child, dir, ports) {
    this.child = child;
    this.dir = dir;
    this.ports = ports;
    this.port = ports[0];
    this.bases = ports.map((p) => `http://127.0.0.1:${p}`);
    this.base = this.bases[0];
  }

  get pid() { return this.child.pid; }
  get running() { return !exited(this.child); }

  // URL of an instance (on server `server`, 0 = the first one).
  url(instance, rest = '', server = 0) { return `${this.bases[server]}/redis/${instance}${rest}`; }

  read(name) {
    try { return readFileSync(path.join(this.dir, name), 'utf8'); } catch { return ''; }
  }

  errorLog() { return this.read('error.log'); }

  // Graceful stop of the master we started (it stops its own worker).
  async stop() {
    await stopChild(this.child, 'SIGQUIT', 5000);
  }
}

/**
 * nginx -t of a configuration with these lines (an array of strings) in
 * http {}, next to one server with `location /redis/ { redisgate; }`.
 * Resolves { code, out } (out: nginx's standard output and error).
 */
export async function nginxTest(httpLines) {
  const dir = makeTmpDir('rg-conf-');
  const conf = path.join(dir, 'nginx.conf');
  writeFileSync(conf, [
    `load_module ${REDISGATE_MODULE};`,
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log;`,
    'events { worker_connections 64; }',
    'http {',
    '  access_log off;',
    ...httpLines.map((l) => '  ' + l),
    '  server { listen 127.0.0.1:1; location /redis/ { redisgate; } }',
    '}',
  ].join('\n') + '\n');
  const r = await runProgram(NGINX_BIN, ['-t', '-p', dir + '/', '-c', conf], { timeoutMs: 20000 });
  return { code: r.code, out: r.stdout + r.stderr };
}

// nginx -t of each URL as an instance's: it passes (want === true), or it
// fails with want (a RegExp) in the output
export async function checkInstanceUrls(id, urls, want) {
  for (const url of urls) {
    const r = await nginxTest([`redisgate_instance ${id} ${url};`]);
    if (want === true) {
      assert.equal(r.code, 0, `${url}: ${r.out}`);
      assert.match(r.out, /test is successful/);
    } else {
      assert.notEqual(r.code, 0, `${url} passed nginx -t`);
      assert.match(r.out, want, `${url}: ${r.out}`);
    }
  }
}

// Lines of error.log at or above `notice`, i.e. without the debug/info chatter.
export function significantLogLines(log) {
  return log.split('\n').filter((l) => /\[(emerg|alert|crit|error|warn|notice)\]/.test(l));
}

/**
 * Assert nginx's error.log has no [alert], no [emerg], no "exited on signal"
 * and, unless allowCrit, no [crit].
 */
export function assertCleanErrorLog(log, { allowCrit = false } = {}) {
  const bad = log.split('\n').filter((l) =>
    /\[(alert|emerg)\]/.test(l) ||
    /exited on signal/.test(l) ||
    (!allowCrit && /\[crit\]/.test(l)));
  assert.deepEqual(bad, [], 'error.log has alert/emerg/crit/crash lines');
}

/**
 * The end of a suite: stop nginx and check its error.log, then stop the
 * servers (redis, pg...) whatever happened.
 */
export async function stopAll(nginx, ...servers) {
  try {
    if (nginx) {
      // a master that died during the suite is a failure of its own
      const running = nginx.running;
      await nginx.stop();
      assert.ok(running, 'nginx master was still running at the end');
      assertCleanErrorLog(nginx.errorLog());
    }
  } finally {
    await Promise.all(servers.map((srv) => srv?.stop()));
  }
}

// ---------------------------------------------------------------------------
// PostgreSQL key store (tools/pg.sh, tools/redisgate-admin)

export const PG_SH = path.join(REPO_ROOT, 'tools', 'pg.sh');
export const REDISGATE_ADMIN = path.join(REPO_ROOT, 'tools', 'redisgate-admin');

/**
 * Run a program to completion, bounded in time (SIGKILL at the bound).
 * Resolves { code, stdout, stderr }; never rejects for a non-zero exit.
 */
export function runProgram(file, args, { input, timeoutMs = 60000, env, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: cwd ?? REPO_ROOT, env: env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'],
    });
    track(child, `${path.basename(file)}`);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    child.once('error', (e) => { clearTimeout(t); reject(e); });
    child.once('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code: code ?? (signal ? 128 : 1), signal, stdout, stderr });
    });
    child.stdin.on('error', () => { /* it may exit before reading */ });
    child.stdin.end(input ?? '');
  });
}

function pgShell(fn, args) {
  // the arguments travel as positional parameters, never inside the script
  return ['-c', `. "$0" && ${fn} "$@"`, PG_SH, ...args];
}

/**
 * A private PostgreSQL cluster (tools/pg.sh) in its own temporary directory:
 * trust authentication, superuser "postgres", database "redisgate".  Started
 * and stopped only through pg_ctl on its own data directory.
 */
export class PgCluster {
  // certDir: tools/gen-test-certs' directory, for a server with ssl = on
  // (its server.crt and server.key); null for none
  constructor(dir, port, certDir = null) {
    this.dir = dir;
    this.port = port;
    this.certDir = certDir;
    this.running = false;
  }

  // libpq conninfo; extra: more "name=value" words (e.g. application_name=x)
  conninfo(extra = '') {
    return `host=127.0.0.1 port=${this.port} dbname=redisgate user=postgres` +
      (extra ? ' ' + extra : '');
  }

  // init (first time) and start; idempotent
  async start(timeoutMs = 90000) {
    const args = [this.dir, String(this.port), ...(this.certDir ? [this.certDir] : [])];
    const r = await runProgram('bash', pgShell('redisgate_start_pg', args), { timeoutMs });
    pgClusters.add(this);
    this.running = true;
    if (r.code !== 0) {
      throw new Error(`redisgate_start_pg failed (${r.code}):\n${r.stderr}${r.stdout}`);
    }
  }

  // fast shutdown (immediate if that fails); the data directory stays
  async stop(timeoutMs = 70000) {
    const r = await runProgram('bash', pgShell('redisgate_stop_pg', [this.dir]), { timeoutMs });
    this.running = false;
    pgClusters.delete(this);
    if (r.code !== 0) throw new Error(`redisgate_stop_pg failed (${r.code}):\n${r.stderr}`);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  stopSync() {
    if (!this.running) return;
    spawnSync('bash', pgShell('redisgate_stop_pg', [this.dir]), { cwd: REPO_ROOT, stdio: 'ignore', timeout: 70000 });
    this.running = false;
    pgClusters.delete(this);
  }

  /**
   * Run SQL with psql (from standard input, ON_ERROR_STOP, unaligned, tuples
   * only, tab-separated).  Resolves its standard output (trimmed); rejects
   * on an error.  vars: psql variables ({ name: value } -> :'name').
   */
  async sql(text, { vars = {}, timeoutMs = 30000, database = 'redisgate' } = {}) {
    const args = ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1',
      '-d', `host=127.0.0.1 port=${this.port} dbname=${database} user=postgres`];
    for (const [k, v] of Object.entries(vars)) args.push('-v', `${k}=${v}`);
    const r = await runProgram('psql', args, { input: text, timeoutMs });
    if (r.code !== 0) throw new Error(`psql failed (${r.code}): ${r.stderr}\n--- SQL:\n${text}`);
    return r.stdout.trim();
  }

  // Rows of a query as arrays of strings.
  async rows(text, opts) {
    const out = await this.sql(text, opts);
    return out === '' ? [] : out.split('\n').map((l) => l.split('\t'));
  }

  /**
   * tools/redisgate-admin --db <this cluster> ARGS...: resolves the
   * NAME=VALUE lines of its output as an object (plus .stdout); rejects on a
   * non-zero exit.
   */
  async admin(...args) {
    const r = await runProgram(REDISGATE_ADMIN, ['--db', this.conninfo(), ...args], { timeoutMs: 30000 });
    if (r.code !== 0) throw new Error(`redisgate-admin ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    const out = { stdout: r.stdout };
    for (const line of r.stdout.split('\n')) {
      const m = /^(\w+)=(.*)$/.exec(line);
      if (m) out[m[1]] = m[2];
    }
    return out;
  }

  log() {
    try { return readFileSync(path.join(this.dir, 'postgresql.log'), 'utf8'); } catch { return ''; }
  }

  /** The key store listener of an nginx (its application_name) is connected and has LISTENed. */
  async listening(app) {
    const out = await this.sql(`
      select count(*) from pg_stat_activity
       where application_name = :'app' and query = 'LISTEN redisgate'`,
    { vars: { app } });
    return Number(out) === 1;
  }
}

/**
 * A fresh cluster on a free port with the schema applied (redisgate-admin
 * schema apply).  settings: { name: value } for ALTER SYSTEM before the
 * schema (a restart follows when there are any, e.g. for
 * shared_preload_libraries).  tls: ssl = on, with the test certificates
 * (testCerts: server.crt is for 127.0.0.1 and localhost).
 */
export async function startPg({ settings = {}, tls: withTls = false } = {}) {
  const dir = makeTmpDir('rg-pg-');
  const pg = new PgCluster(dir, await freePort(), withTls ? testCerts().dir : null);
  await pg.start();
  const names = Object.keys(settings);
  if (names.length) {
    const vars = {};
    const stmts = names.map((n, i) => {
      vars[`v${i}`] = String(settings[n]);
      if (!/^[a-z_.]+$/.test(n)) throw new Error(`bad setting name ${n}`);
      return `ALTER SYSTEM SET ${n} = :'v${i}';`;
    });
    await pg.sql(stmts.join('\n'), { vars, database: 'postgres' });
    await pg.restart();
  }
  const r = await pg.admin('schema', 'apply');
  if (!/schema applied/.test(r.stdout)) throw new Error(`schema apply said: ${r.stdout}`);
  return pg;
}

// ---------------------------------------------------------------------------
// misc helpers

/**
 * One plain fetch() against the gateway.  rest: path after /redis/<id>;
 * init: fetch options plus { server, timeoutMs }.  Every request is bounded
 * (AbortSignal.timeout).  Resolves { status, headers, text, json }.
 */
export async function rg(nginx, instance, token, rest = '', init = {}) {
  const { server = 0, timeoutMs = 10000, headers: h = {}, ...rest2 } = init;
  const headers = { ...h };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(nginx.url(instance, rest, server), {
    ...rest2,
    headers,
    signal: rest2.signal ?? AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

/**
 * Load: `clients` loops of send(worker, i) for ms; check(r) returns a
 * string when a response r ({ status, text, json }) is wrong.  Resolves
 * { total, status: { code: count }, errors: { name: count } (requests
 * without an HTTP answer), wrong: [the first 10 wrong answers] }.
 */
export async function hammer({ ms, clients, send, check }) {
  const stats = { total: 0, status: {}, errors: {}, wrong: [] };
  const end = Date.now() + ms;
  await Promise.all(Array.from({ length: clients }, async (_, w) => {
    for (let i = 0; Date.now() < end; i++) {
      stats.total++;
      try {
        const r = await send(w, i);
        stats.status[r.status] = (stats.status[r.status] || 0) + 1;
        const why = check(r);
        if (why && stats.wrong.length < 10) stats.wrong.push(`${why}: ${r.status} ${r.text.slice(0, 200)}`);
      } catch (e) {
        const k = e.code || e.name || String(e);
        stats.errors[k] = (stats.errors[k] || 0) + 1;
      }
    }
  }));
  return stats;
}

/**
 * A Redis (a RedisServer) SIGKILLed and started again twice, at 20/35% and
 * 55/70% of `ms`, while `clients` loops send it INCRs (get(rest)) and
 * pipelines of INCR and GET (post(rest, json)) on keys named after `key`.
 * An answer is right when it is 200 with the right results, or 500 with
 * one of the error messages in `down`.  Resolves hammer()'s stats.
 */
export async function killTwiceUnderLoad({ redis, ms, clients, key, get, post, down }) {
  const t0 = Date.now();
  const faults = (async () => {
    for (const [at, what] of [[0.2, 'kill'], [0.35, 'start'], [0.55, 'kill'], [0.7, 'start']]) {
      await sleep(ms * at - (Date.now() - t0));
      if (what === 'kill') { redis.child.kill('SIGKILL'); await redis.stop(); } else await redis.start();
    }
  })();
  const stats = await hammer({
    ms,
    clients,
    send: (w, i) => (i % 2
      ? get(`/incr/${key}:${w}`)
      : post('/pipeline', [['INCR', `${key}:p${w}`], ['GET', `${key}:p${w}`]])),
    check: (r) => {
      if (r.status === 200) {
        if (Array.isArray(r.json)) {
          return r.json.length === 2 && Number.isInteger(r.json[0].result)
            && r.json[1].result === String(r.json[0].result) ? null : 'pipeline answer';
        }
        return Number.isInteger(r.json?.result) ? null : 'INCR answer';
      }
      if (r.status === 500) return down.includes(r.json?.error) ? null : 'error text';
      return 'status';
    },
  });
  await faults;
  return stats;
}

// one line about what hammer() saw, for t.diagnostic()
export function summary(name, stats) {
  return `${name}: ${stats.total} requests, statuses ${JSON.stringify(stats.status)}` +
    (Object.keys(stats.errors).length ? `, errors ${JSON.stringify(stats.errors)}` : '');
}

// fn() until it resolves truthy (true) or `tries` tries `ms` apart (false)
export async function untilOk(fn, tries = 100, ms = 100) {
  for (let i = 0; i < tries; i++) {
    try { if (await fn()) return true; } catch { /* not yet */ }
    await sleep(ms);
  }
  return false;
}

export { sleep };
