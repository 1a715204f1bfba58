// Load benchmark: a spawned `pixelfox serve` (every role) on loopback, against the machine's NATS and
// Postgres (its own database and stream namespace, removed afterwards), for a fixed time per scenario:
//
//   1. GET /api/v1/images/:uuid with autocannon (keep-alive connections, the read path);
//   2. uploads, each a session (API) then a direct upload (storage node) of a fresh small PNG. autocannon
//      cannot chain two requests, so a bounded concurrent fetch loop does it instead.
//
// Prints error rate, latency p50/p90/p99 and requests per second, and writes bench/RESULTS-load.md.
//
//   3. the uploads again against a node without job workers (DISABLE_JOB_WORKERS), to show what rendering
//      variants in the same process costs the upload path.
//
//   node --import tsx bench/load.ts [--duration 10] [--connections 16] [--upload-concurrency 8] [--no-write]
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import sharp from 'sharp';
import { makeUser } from '../test/helpers/stack.js';
import { chaosEnv, liftRateLimits, proc } from '../test/chaos/helpers/env.js';
import { corpus, LoadClient, percentile } from '../test/chaos/helpers/load.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '16' },
    'upload-concurrency': { type: 'string', default: '8' },
    'no-write': { type: 'boolean', default: false },
  },
});
const DURATION_S = Number(args.duration);
const CONNECTIONS = Number(args.connections);
const UPLOAD_CONCURRENCY = Number(args['upload-concurrency']);

interface Row {
  scenario: string;
  requests: number;
  errors: number;
  errorRate: number;
  p50: number;
  p90: number;
  p99: number;
  rps: number;
  note: string;
}

/** Teardown functions run in reverse order at the end (the helpers were written for tap's t.teardown). */
const teardowns: (() => unknown)[] = [];
const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };

async function readScenario(url: string, apiKey: string, ids: string[]): Promise<Row> {
  // Several images, round-robin through autocannon's request list would need a setup hook per request;
  // one image read over and over is the hot path (the read model row, its variants, metadata, backups).
  const r = await autocannon({
    url: `${url}/api/v1/images/${ids[0] ?? ''}`,
    headers: { authorization: `Bearer ${apiKey}` },
    connections: CONNECTIONS,
    duration: DURATION_S,
    timeout: 10,
  });
  const total = r['2xx'] + r.non2xx + r.errors + r.timeouts;
  return {
    scenario: `GET /api/v1/images/:uuid (autocannon, ${CONNECTIONS} connections)`,
    requests: total,
    errors: r.non2xx + r.errors + r.timeouts,
    errorRate: total ? (r.non2xx + r.errors + r.timeouts) / total : 0,
    p50: r.latency.p50,
    p90: r.latency.p90,
    p99: r.latency.p99,
    rps: r.requests.average,
    note: `${r['2xx']} × 2xx, ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts`,
  };
}

/** Across scenarios: every upload is a new image (never a duplicate of an earlier one). */
let imageCounter = 0;

async function uploadScenario(url: string, apiKeys: string[]): Promise<Row> {
  // One user per client: the quota check serialises the uploads of one user (an advisory lock per user).
  const clients = apiKeys.map(
    (k) => new LoadClient(() => url, k, { retry: false, requestTimeoutMs: 30_000 }),
  );
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  const deadline = Date.now() + DURATION_S * 1000;
  const t0 = Date.now();
  await Promise.all(
    clients.map(async (client) => {
      while (Date.now() < deadline) {
        const i = imageCounter++;
        // A fresh image per request (never a duplicate): 32×24 PNG, colour from the counter.
        const bytes = await sharp({
          create: {
            width: 32,
            height: 24,
            channels: 3,
            background: { r: i % 256, g: Math.floor(i / 256) % 256, b: Math.floor(i / 65536) % 256 },
          },
        })
          .png()
          .toBuffer();
        const start = Date.now();
        const r = await client.once({ name: `bench-${i}.png`, bytes, sha256: String(i) });
        latencies.push(Date.now() - start);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }
    }),
  );
  const elapsed = (Date.now() - t0) / 1000;
  const ok = [...statuses].filter(([s]) => s >= 200 && s < 300).reduce((a, [, c]) => a + c, 0);
  const directMs = clients.flatMap((c) => c.attempts.filter((a) => a.step === 'upload').map((a) => a.ms));
  return {
    scenario: `upload: session + direct upload of a 32×24 PNG (${UPLOAD_CONCURRENCY} concurrent clients, one user each)`,
    requests: latencies.length,
    errors: latencies.length - ok,
    errorRate: latencies.length ? (latencies.length - ok) / latencies.length : 0,
    p50: percentile(latencies, 50),
    p90: percentile(latencies, 90),
    p99: percentile(latencies, 99),
    rps: latencies.length / elapsed,
    note: `statuses ${[...statuses].map(([s, c]) => `${s}×${c}`).join(', ')}; the direct upload alone p50 ${percentile(directMs, 50)} ms, p99 ${percentile(directMs, 99)} ms`,
  };
}

/** Uploads with and without variant rendering in the same process, from the last two rows. */
function ratioNote(rows: Row[]): string {
  const [withWorkers, without] = rows.slice(-2);
  if (!withWorkers || !without || !without.rps) return '';
  return (
    `Uploads while the same process renders variants: ${withWorkers.rps.toFixed(1)} req/s, p50 ${withWorkers.p50} ms; ` +
    `without job workers: ${without.rps.toFixed(1)} req/s, p50 ${without.p50} ms ` +
    `(${((withWorkers.rps / without.rps) * 100).toFixed(0)} % of the throughput). On this 2-core machine the rendering ` +
    'competes with the upload path for CPU; a deployment gives workers their own processes (`pixelfox serve worker`).'
  );
}

function machine(): string {
  const load = os.loadavg()[0]?.toFixed(1);
  let nats = '';
  try {
    nats = execFileSync('nats-server', ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    nats = 'nats-server ?';
  }
  return `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM; Node ${process.version}; ${nats}; 1-min load average ${load} at the start`;
}

async function main() {
  const started = new Date();
  const before = machine();
  const env = await chaosEnv(t);
  await liftRateLimits(env);
  const node = await proc(t, env, 'bench', ['api', 'storage', 'worker', 'projector']);
  const user = await makeUser(env, 'premium_max');
  const seed = new LoadClient(() => node.url, user.apiKey);
  const ids: string[] = [];
  for (const item of await corpus(3, { photos: 3 })) {
    const o = await seed.upload(item);
    if (o.imageId) ids.push(o.imageId);
  }
  if (ids.length === 0) throw new Error('could not store the images to read');

  const rows: Row[] = [];
  rows.push(await readScenario(node.url, user.apiKey, ids));
  const uploaders: string[] = [];
  for (let i = 0; i < UPLOAD_CONCURRENCY; i++) uploaders.push((await makeUser(env, 'premium_max')).apiKey);
  rows.push(await uploadScenario(node.url, uploaders));
  // The same node (same port and pool) without job workers: nothing renders variants meanwhile.
  await node.stop();
  const bare = await proc(t, env, 'bench-no-workers', ['api', 'storage', 'worker', 'projector'], {
    port: node.port,
    extra: { DISABLE_JOB_WORKERS: '1' },
  });
  const bareRow = await uploadScenario(bare.url, uploaders);
  rows.push({ ...bareRow, scenario: `${bareRow.scenario}, no job workers in the process` });

  const table = [
    '| scenario | requests | errors | error rate | p50 ms | p90 ms | p99 ms | req/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.requests} | ${r.errors} | ${(r.errorRate * 100).toFixed(2)} % | ${r.p50} | ${r.p90} | ${r.p99} | ${r.rps.toFixed(1)} |`,
    ),
  ].join('\n');
  console.log(table);
  for (const r of rows) console.log(`- ${r.scenario}: ${r.note}`);

  if (!args['no-write']) {
    const md = `## Load: reads and uploads against one node

Machine: ${before}. Date: ${started.toISOString().slice(0, 10)}. One \`pixelfox serve api storage worker projector\`
process on loopback against the machine's NATS and Postgres (shared with other work: absolute numbers are
inflated; compare runs on the same machine). Its workers render variants of every upload meanwhile (the last row:
the same node with \`DISABLE_JOB_WORKERS\`, nothing rendered).

Reproduce: \`node --import tsx bench/load.ts\` (add \`--duration S\`, \`--connections N\`, \`--upload-concurrency N\`).

${table}

${rows.map((r) => `- ${r.scenario}: ${r.note}.`).join('\n')}

${ratioNote(rows)}

Each scenario runs ${DURATION_S} s. Reads: autocannon, keep-alive, one image (its read-model row, variants,
metadata and backups). Uploads: each request is the client flow (\`POST /api/v1/upload/sessions\`, then the
multipart upload to the storage node) of a fresh 32×24 PNG, measured end to end; a bounded loop of concurrent
clients (one user each: the atomic quota check serialises the uploads of one user) instead of autocannon, which
cannot chain two requests. Rate limits are lifted for the run.
`;
    await writeFile(path.join(HERE, 'RESULTS-load.md'), md);
    console.log(`written ${path.join(HERE, 'RESULTS-load.md')}`);
  }
}

try {
  await main();
} finally {
  for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
}
