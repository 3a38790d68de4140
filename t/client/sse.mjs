// Server-Sent Events seen from a raw socket, for the streaming suites
// (stream.test.mjs, stream-keystore.test.mjs): the wire as it is, chunked
// framing, "data: " lines, comments, with no client library in between.
import net from 'node:net';
import tls from 'node:tls';
import { StringDecoder } from 'node:string_decoder';
import { sleep } from './harness.mjs';

// fn() until truthy, every 15 ms, for at most ms; else fails with what()
export async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) {
      throw new Error(`timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(15);
  }
}

/**
 * One HTTP/1.1 request on a socket of its own, read as Server-Sent Events:
 * status, headers (lower-case names), the chunked body decoded (body(),
 * when keep), its "data: " lines (events, without "data: "), the ":"
 * lines (comments), any other non-empty line (others), ended once the
 * last chunk came (or, for a plain answer, its Content-Length).  port
 * null: no request, a parser for data() or bodyBytes() only.  version:
 * '1.0' for an HTTP/1.0 request; tlsOptions: over TLS (node:tls's).
 */
export class Sse {
  constructor(port, urlPath, {
    method = 'GET', headers = {}, body, keep = true, version = '1.1', tlsOptions = null,
  } = {}) {
    this.status = null;
    this.headers = {};
    this.events = [];
    this.comments = 0;
    this.others = [];
    this.ended = false;
    this.closed = false;
    this.keep = keep;
    this.raw = [];
    this.length = 0;
    this.head = Buffer.alloc(0);
    this.pending = Buffer.alloc(0);
    this.state = 'size';
    this.left = 0;
    this.decoder = new StringDecoder('utf8');
    this.partial = '';
    if (port === null) return;
    let req = `${method} ${urlPath} HTTP/${version}\r\nHost: 127.0.0.1\r\n`;
    for (const [k, v] of Object.entries(headers)) req += `${k}: ${v}\r\n`;
    const b = body === undefined ? null : Buffer.from(body);
    if (b) req += `Content-Length: ${b.length}\r\n`;
    this.sock = tlsOptions
      ? tls.connect({ port, host: '127.0.0.1', ...tlsOptions })
      : net.connect({ port, host: '127.0.0.1' });
    this.sock.setNoDelay(true);
    this.sock.write(req + '\r\n');
    if (b) this.sock.write(b);
    this.sock.on('data', (d) => this.data(d));
    this.sock.on('error', () => { /* seen as closed */ });
    this.sock.on('close', () => { this.closed = true; });
  }

  get subscribed() { return this.events.some((e) => /^p?subscribe,/.test(e)); }
  get errors() { return this.events.filter((e) => e.startsWith('error,')); }
  get messages() { return this.events.filter((e) => /^p?message,/.test(e)); }
  get done() { return this.ended || this.closed; }
  body() { return Buffer.concat(this.raw); }
  text() { return this.body().toString('utf8'); }
  json() { return JSON.parse(this.text()); }
  close() { this.sock?.destroy(); }

  data(d) {
    if (this.head) {
      this.head = Buffer.concat([this.head, d]);
      const i = this.head.indexOf('\r\n\r\n');
      if (i < 0) return;
      const lines = this.head.toString('latin1', 0, i).split('\r\n');
      this.statusLine = lines[0];
      this.status = Number(lines[0].split(' ')[1]);
      for (const l of lines.slice(1)) {
        const k = l.indexOf(':');
        this.headers[l.slice(0, k).toLowerCase()] = l.slice(k + 1).trim();
      }
      this.chunked = /chunked/i.test(this.headers['transfer-encoding'] ?? '');
      this.contentLength = this.headers['content-length'] === undefined
        ? null : Number(this.headers['content-length']);
      d = this.head.subarray(i + 4);
      this.head = null;
      if (!this.chunked && this.contentLength === 0) this.ended = true;
    }
    if (!this.chunked) {
      if (d.length) this.bodyBytes(d);
      if (this.contentLength !== null && this.length >= this.contentLength) this.ended = true;
      return;
    }
    this.pending = this.pending.length ? Buffer.concat([this.pending, d]) : d;
    for (;;) {
      if (this.state === 'size') {
        const e = this.pending.indexOf('\r\n');
        if (e < 0) return;
        const size = parseInt(this.pending.toString('latin1', 0, e), 16);
        if (Number.isNaN(size)) throw new Error(`bad chunk size line ${this.pending.toString('latin1', 0, e)}`);
        this.pending = this.pending.subarray(e + 2);
        if (size === 0) {
          this.state = 'trailer';
        } else {
          this.left = size;
          this.state = 'data';
        }
      } else if (this.state === 'data') {
        if (!this.pending.length) return;
        const n = Math.min(this.left, this.pending.length);
        this.bodyBytes(this.pending.subarray(0, n));
        this.pending = this.pending.subarray(n);
        this.left -= n;
        if (this.left === 0) this.state = 'crlf';
      } else if (this.state === 'crlf' || this.state === 'trailer') {
        if (this.pending.length < 2) return;
        if (this.pending.toString('latin1', 0, 2) !== '\r\n') {
          throw new Error(`chunk not followed by CRLF: ${this.pending.toString('latin1', 0, 20)}`);
        }
        this.pending = this.pending.subarray(2);
        if (this.state === 'trailer') {
          this.ended = true;
          this.state = 'done';
          this.after = this.pending;    // anything past the last chunk
          return;
        }
        this.state = 'size';
      } else {
        return;
      }
    }
  }

  bodyBytes(b) {
    this.length += b.length;
    if (this.keep) this.raw.push(Buffer.from(b));
    const text = this.partial + this.decoder.write(b);
    let at = 0;
    for (;;) {
      const i = text.indexOf('\n', at);
      if (i < 0) break;
      const line = text.slice(at, i);
      at = i + 1;
      if (line.startsWith('data: ')) this.events.push(line.slice(6));
      else if (line === ':') this.comments++;
      else if (line !== '') this.others.push(line);
    }
    this.partial = text.slice(at);
  }
}
