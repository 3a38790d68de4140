// A fixed number of keep-alive GETs, for bench/cpu-per-request's callgrind
// runs (wrk runs for a time, not a count):
//   node bench/fixed-load.mjs URL TOKEN REQUESTS CONNECTIONS
// Every connection sends its next request when the answer to its last one
// has come whole (no HTTP pipelining), so the server sees exactly REQUESTS
// requests on exactly CONNECTIONS connections.  Each answer must be a 200
// with a Content-Length.  Prints one line:
//   FIXED requests=... ok=... errors=... duration_us=...
// and exits 1 if any answer was not a 200.

import net from 'node:net';

const [urlArg, token, nArg, cArg] = process.argv.slice(2);
if (!urlArg || !token || !nArg) {
  console.error('usage: fixed-load.mjs URL TOKEN REQUESTS [CONNECTIONS]');
  process.exit(2);
}
const url = new URL(urlArg);
const total = Number(nArg);
const conns = Math.max(1, Math.min(Number(cArg ?? 1), total));
const request = Buffer.from(
  `GET ${url.pathname}${url.search} HTTP/1.1\r\n` +
  `Host: ${url.host}\r\n` +
  `Authorization: Bearer ${token}\r\n\r\n`);

let sent = 0;
let ok = 0;
let errors = 0;
let done = 0;
let closed = 0;
const started = process.hrtime.bigint();

function finish() {
  const us = Number((process.hrtime.bigint() - started) / 1000n);
  console.log(`FIXED requests=${done} ok=${ok} errors=${errors} duration_us=${us}`);
  process.exit(errors || done !== total ? 1 : 0);
}

function connection() {
  const s = net.connect(Number(url.port || 80), url.hostname);
  let buf = Buffer.alloc(0);
  s.setNoDelay(true);
  const next = () => {
    if (sent >= total) {
      s.end();
      return;
    }
    sent++;
    s.write(request);
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
      if (head.startsWith('HTTP/1.1 200 ')) ok++; else errors++;
      done++;
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
