// Peers for t/120-tls.t that a real Redis cannot play, one kind per
// process, on 127.0.0.1 only.  Each exits on SIGTERM, and by itself after
// PEER_LIFETIME seconds (120), so that none outlives its test file.
//
//   node t/lib/peers.mjs PORT sni-front TARGET CERTDIR LOG
//       TLS in front of the plain Redis on TARGET.  The certificate is
//       CERTDIR/wrongname.crt when the client names other.example (SNI),
//       CERTDIR/server.crt otherwise.  Each TLS connection appends the name
//       it was given as a line "sni=NAME" ("sni=-": none) to LOG.
//   node t/lib/peers.mjs PORT cut TARGET BYTES
//       a TCP proxy to TARGET that passes on the first BYTES bytes that
//       TARGET sends on a connection, then closes both sides: with a TLS
//       Redis behind it, in the middle of a record of a large reply
//   node t/lib/peers.mjs PORT garbage
//       not TLS: answers "-ERR this is not TLS" to whatever arrives

import { appendFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

const [port, kind, ...args] = process.argv.slice(2);
const sockets = new Set();

function keep(sock) {
  sockets.add(sock);
  sock.on('close', () => sockets.delete(sock));
  sock.on('error', () => sock.destroy());
  return sock;
}

// both ways between a and b; when either side ends, both do
function join(a, b) {
  a.pipe(b);
  b.pipe(a);
  a.on('close', () => b.destroy());
  b.on('close', () => a.destroy());
}

function target(tport) {
  return keep(net.connect({ host: '127.0.0.1', port: Number(tport) }));
}

let server;

if (kind === 'sni-front') {
  const [tport, certs, log] = args;
  const context = (name) => tls.createSecureContext({
    cert: readFileSync(path.join(certs, `${name}.crt`)),
    key: readFileSync(path.join(certs, `${name}.key`)),
  });
  const byName = { 'other.example': context('wrongname') };
  const fallback = context('server');
  server = tls.createServer({
    SNICallback: (name, cb) => cb(null, byName[name] ?? fallback),
    cert: readFileSync(path.join(certs, 'server.crt')),
    key: readFileSync(path.join(certs, 'server.key')),
  }, (sock) => {
    appendFileSync(log, `sni=${sock.servername || '-'}\n`);
    join(keep(sock), target(tport));
  });
  server.on('tlsClientError', () => { /* a client that gave up: fine */ });

} else if (kind === 'cut') {
  const [tport, bytes] = args;
  server = net.createServer((client) => {
    keep(client);
    const up = target(tport);
    let left = Number(bytes);
    client.pipe(up);
    up.on('data', (d) => {
      if (left === 0) return;
      if (d.length < left) {
        left -= d.length;
        client.write(d);
        return;
      }
      client.end(d.subarray(0, left), () => {
        client.destroy();
        up.destroy();
      });
      left = 0;
      up.pause();
    });
    client.on('close', () => up.destroy());
    up.on('close', () => client.destroy());
  });

} else if (kind === 'garbage') {
  server = net.createServer((sock) => {
    keep(sock).on('data', () => sock.write('-ERR this is not TLS\r\n'));
  });

} else {
  console.error('usage: node t/lib/peers.mjs PORT sni-front|cut|garbage ...');
  process.exit(2);
}

function stop() {
  for (const s of sockets) s.destroy();
  server.close();
  process.exit(0);
}

process.on('SIGTERM', stop);
setTimeout(stop, Number(process.env.PEER_LIFETIME || 120) * 1000).unref();
server.listen(Number(port), '127.0.0.1');
