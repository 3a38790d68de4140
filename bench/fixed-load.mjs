// A fixed number of keep-alive GETs, for bench/cpu-per-request's callgrind
// runs and bench/run's key-store cold start (wrk runs for a time, not a
// count):
//   node bench/fixed-load.mjs URL TOKEN REQUESTS CONNECTIONS
//   node bench/fixed-load.mjs URL @FILE REQUESTS CONNECTIONS
// With @FILE, the requests are FILE's lines ("path<TAB>token", the form of
// bench/wrk/rotate.lua) in turn, on URL's host and port: as many requests
// as lines sends each line once.  Every connection sends its next request
// when the answer to its last one has come whole (no HTTP pipelining), so
// the server sees exactly REQUESTS requests on exactly CONNECTIONS
// connections.  Each answer must be a 200 with a Content-Length.  Prints
// one line:
//   FIXED requests=... ok=... errors=... duration_us=... p50_us=... p99_us=...
// (latencies from writing a request to its answer's last byte) and exits 1
// if any answer was not a 200.

import net from 'node:net';
import { readFileSync } from 'node:fs';

const [urlArg, token, nArg, cArg] = process.argv.slice(2);
if (!urlArg || !token || !nArg) {
  console.error('usage: fixed-load.mjs URL TOKEN REQUESTS [CONNECTIONS]');
  process.exit(2);
}
const url = new URL(urlArg);
const total = Number(nArg);
const conns = Math.max(1, Math.min(Number(cArg ?? 1), total));
const format = (path, tok) => Buffer.from(
  `GET ${path} HTTP/1.1\r\n` +
  `Host: ${url.host}\r\n` +
  `Authorization: Bearer ${tok}\r\n\r\n`);
const requests = token.startsWith('@')
  ? readFileSync(token.slice(1), 'latin1').split('\n')
    .map((l) => /^(\S+)\t(\S+)$/.exec(l)).filter(Boolean)
    .map((m) => format(m[1], m[2]))
  : [format(`${url.pathname}${url.search}`, token)];
if (!requests.length) {
  console.error(`fixed-load: no "path<TAB>token" line in ${token.slice(1)}`);
  process.exit(2);
}

let sent = 0;
let ok = 0;
let errors = 0;
let done = 0;
let closed = 0;
const latencies = new Float64Array(total);
const started = process.hrtime.bigint();

function finish() {
  const us = Number((process.hrtime.bigint() - started) / 1000n);
  const l = latencies.subarray(0, done).sort();
  const pct = (p) => (done ? Math.round(l[Math.min(done - 1, Math.floor(done * p))]) : 0);
  console.log(`FIXED requests=${done} ok=${ok} errors=${errors} duration_us=${us} ` +
              `p50_us=${pct(0.5)} p99_us=${pct(0.99)}`);
  process.exit(errors || done !== total ? 1 : 0);
}

function connection() {
  const s = net.connect(Number(url.port || 80), url.hostname);
  let buf = Buffer.alloc(0);
  let t0 = 0n;
  s.setNoDelay(true);
  const next = () => {
    if (sent >= total) {
      s.end();
      return;
    }
    t0 = process.hrtime.bigint();
    s.write(requests[sent++ % requests.length]);
  };
  s.on('connect', next);
  s.on('data', (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!m) {
        console.error('fixed-load: an answer without Content-Length:\n' + head);
        process.exit(1);
      }
      const len = end + 4 + Number(m[1]);
      if (buf.length < len) return;
      if (head.startsWith('HTTP/1.1 200 ')) {
        ok++;
      } else if (errors++ === 0) {
        console.error('fixed-load: the first answer that is not a 200:\n' +
                      buf.subarray(0, len).toString('latin1'));
      }
      latencies[done++] = Number(process.hrtime.bigint() - t0) / 1000;
      buf = buf.subarray(len);
      next();
    }
  });
  s.on('error', (e) => {
    console.error(`fixed-load: ${e.message}`);
    process.exit(1);
  });
  s.on('close', () => {
    if (++closed === conns) finish();
  });
}

for (let i = 0; i < conns; i++) connection();
