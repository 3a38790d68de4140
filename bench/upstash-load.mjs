// The @upstash/redis client's load: BENCH_OPS gets of one key, at most
// BENCH_CONCURRENCY in flight, with enableAutoPipelining (BENCH_AUTOPIPELINE=0
// turns it off: one HTTP request per get).  The client comes from
// t/client/node_modules (make test-deps installs it).  Prints one line:
//   BENCH ops=... duration_us=... p50_us=... p99_us=... http_requests=...
//         http_errors=... errors=...

import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const require = createRequire(new URL('../t/client/package.json', import.meta.url));
const { Redis } = await import(pathToFileURL(require.resolve('@upstash/redis')).href);

const env = (name, def) => process.env[name] ?? def;
const url = env('BENCH_URL');
const token = env('BENCH_TOKEN');
const key = env('BENCH_KEY', 'k');
const ops = Number(env('BENCH_OPS', '20000'));
const concurrency = Number(env('BENCH_CONCURRENCY', '64'));
const autoPipelining = env('BENCH_AUTOPIPELINE', '1') !== '0';
if (!url || !token) {
  console.error('upstash-load: BENCH_URL and BENCH_TOKEN are needed');
  process.exit(2);
}

// count the HTTP requests the client makes, and the failed ones
let httpRequests = 0;
let httpErrors = 0;
const realFetch = globalThis.fetch;
globalThis.fetch = async (...args) => {
  httpRequests++;
  const res = await realFetch(...args);
  if (!res.ok) httpErrors++;
  return res;
};

const redis = new Redis({
  url,
  token,
  enableAutoPipelining: autoPipelining,
  retry: false,
  enableTelemetry: false,
  automaticDeserialization: false,
});

let errors = 0;
let firstError = null;

async function load(n, latencies) {
  let next = 0;
  async function worker() {
    while (next < n) {
      next++;
      const t0 = process.hrtime.bigint();
      try {
        const v = await redis.get(key);
        if (v === null || v === undefined) throw new Error(`no value for ${key}`);
      } catch (e) {
        errors++;
        firstError ??= e;
      }
      latencies?.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
}

await load(Math.min(2000, ops));               // warm up: connections, JIT
httpRequests = httpErrors = errors = 0;

const latencies = [];
const t0 = process.hrtime.bigint();
await load(ops, latencies);
const us = Number(process.hrtime.bigint() - t0) / 1000;

latencies.sort((a, b) => a - b);
const pct = (p) => Math.round(latencies[Math.min(latencies.length - 1,
                                                 Math.floor(latencies.length * p))]);
console.log(`BENCH ops=${ops} duration_us=${Math.round(us)} p50_us=${pct(0.5)} ` +
            `p99_us=${pct(0.99)} http_requests=${httpRequests} ` +
            `http_errors=${httpErrors} errors=${errors}`);
if (firstError) console.error(`upstash-load: first error: ${firstError.message}`);
