// Row 4: ingest of a ~95 MB upload (a valid PNG of noise, zlib level 0) into a spawned storage node,
// against a minimal Node HTTP server (also a spawned `node` process) that streams the request body to a
// temp file while hashing it (SHA-256), fsyncs and renames it: the least an ingest that keeps its
// promise must do. The same client sends the same multipart body, streamed from disk, to both.
// Reported: MB/s of each (median of 3, interleaved) and the storage node's RSS growth during an upload
// (VmRSS of /proc/<pid>/status sampled every 10 ms, and VmHWM reset before each upload).
//
//   node --import tsx bench/ingest.ts              (BENCH_QUICK=1: a 20 MB PNG, 1 run)
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { openAsBlob } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { makeUser, spawnNode } from '../test/helpers/stack.js';
import {
  benchEnv,
  benchSettings,
  f0,
  f1,
  isMain,
  load1,
  median,
  pct,
  profileEnv,
  runStandalone,
  sampleRss,
  table,
  withCleanups,
  type BenchOptions,
  type BenchSection,
} from './lib.js';

export interface IngestBenchOptions extends BenchOptions {
  /** timed uploads to each server (default 3; quick 1), after one warm-up each */
  runs?: number;
  /** approximate file size in bytes (default 95 MB; quick 20 MB) */
  bytes?: number;
}

const TARGET_SHARE = 0.8;
const TARGET_RSS_MIB = 64;

/** The baseline server: body → temp file + SHA-256, fsync, rename; answers with size and hash. */
const BASELINE_SERVER = `
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
const dir = process.argv[2];
const server = http.createServer(async (req, res) => {
  try {
    const tmp = path.join(dir, randomUUID() + '.part');
    const hash = createHash('sha256');
    let size = 0;
    const tap = new Transform({ transform(chunk, _e, cb) { hash.update(chunk); size += chunk.length; cb(null, chunk); } });
    await pipeline(req, tap, createWriteStream(tmp, { flags: 'wx' }));
    const fh = await fs.open(tmp, 'r+');
    await fh.sync();
    await fh.close();
    const final = path.join(dir, randomUUID() + '.bin');
    await fs.rename(tmp, final);
    res.writeHead(201, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ size, sha256: hash.digest('hex') }));
  } catch (err) {
    res.writeHead(500);
    res.end(String(err));
  }
});
server.listen(0, '127.0.0.1', () => console.log('PORT ' + server.address().port));
`;

/** A valid PNG of RGB noise with zlib level 0 and no filtering: its size is its pixel count × 3. */
async function noisePng(file: string, approxBytes: number): Promise<{ width: number; height: number }> {
  const side = Math.floor(Math.sqrt(approxBytes / 3));
  const raw = randomBytes(side * side * 3);
  await sharp(raw, { raw: { width: side, height: side, channels: 3 } })
    .png({ compressionLevel: 0, adaptiveFiltering: false })
    .toFile(file);
  return { width: side, height: side };
}

async function startBaseline(dir: string): Promise<{ url: string; pid: number; stop(): Promise<void> }> {
  const script = path.join(dir, 'baseline-server.mjs');
  await writeFile(script, BASELINE_SERVER);
  const store = path.join(dir, 'baseline-store');
  await mkdir(store, { recursive: true });
  const child = spawn(process.execPath, [script, store], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /PORT (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`baseline server exited (${code})`)));
  });
  return {
    url: `http://127.0.0.1:${port}/`,
    pid: child.pid ?? 0,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** The multipart POST both servers get, body streamed from the file on disk. */
async function post(url: string, file: string, token?: string): Promise<{ status: number; ms: number }> {
  const form = new FormData();
  form.append('file', await openAsBlob(file), 'noise.png');
  const started = performance.now();
  const r = await fetch(url, {
    method: 'POST',
    headers: token ? { authorization: `Bearer ${token}` } : {},
    body: form,
  });
  await r.arrayBuffer();
  return { status: r.status, ms: performance.now() - started };
}

export async function runIngestBench(opts: IngestBenchOptions = {}): Promise<BenchSection> {
  const log = opts.log ?? console.log;
  const runs = opts.runs ?? (opts.quick ? 1 : 3);
  const approx = opts.bytes ?? (opts.quick ? 20e6 : 95e6);
  return withCleanups(log, async (c) => {
    const env = await benchEnv(c);
    await benchSettings(env);
    const work = path.join(env.dataDir, 'bench-ingest');
    await mkdir(work, { recursive: true });
    const file = path.join(work, 'noise.png');
    const dims = await noisePng(file, approx);
    const size = (await stat(file)).size;
    log(`ingest: ${dims.width}×${dims.height} noise PNG, ${f1(size / 1e6)} MB`);

    // No worker role: the variant worker would start decoding each stored 30 MP PNG and compete with
    // the next upload; what is measured here is the ingest.
    const node = await spawnNode(env, { roles: ['api', 'storage', 'projector'], extra: profileEnv() });
    c.teardown(() => node.stop());
    const baseline = await startBaseline(work);
    c.teardown(() => baseline.stop());
    const nodePid = node.child.pid ?? 0;

    const ours = async () => {
      // A new user per upload: the same bytes again would be a duplicate (and still be received in full).
      const user = await makeUser(env, 'premium_max');
      const s = await fetch(`${node.url}/api/v1/upload/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${user.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ file_size: size, filename: 'noise.png' }),
      });
      const session = (await s.json()) as { upload_url: string; token: string };
      if (s.status !== 201) throw new Error(`session answered ${s.status}: ${JSON.stringify(session)}`);
      const rss = sampleRss(nodePid);
      const r = await post(session.upload_url, file, session.token);
      const mem = rss.stop();
      if (r.status !== 201) throw new Error(`upload answered ${r.status}`);
      return { ms: r.ms, growthMiB: mem.growthMiB, startMiB: mem.startMiB, peakMiB: mem.peakMiB };
    };
    const base = async () => {
      const rss = sampleRss(baseline.pid);
      const r = await post(baseline.url, file);
      const mem = rss.stop();
      if (r.status !== 201) throw new Error(`baseline answered ${r.status}`);
      return { ms: r.ms, growthMiB: mem.growthMiB, startMiB: mem.startMiB, peakMiB: mem.peakMiB };
    };

    const loadBefore = load1();
    // RSS growth is counted from the node's idle RSS before its first upload: a later upload could reuse
    // memory an earlier one grew into, which per-upload growth would not show.
    const idleMiB = sampleRss(nodePid).stop().startMiB;
    await base();
    const warm = await ours();
    const b: Awaited<ReturnType<typeof base>>[] = [];
    const o: Awaited<ReturnType<typeof ours>>[] = [];
    for (let i = 0; i < runs; i++) {
      b.push(await base());
      o.push(await ours());
      const lb = b[b.length - 1];
      const lo = o[o.length - 1];
      log(
        `  run ${i + 1}/${runs}: baseline ${f0(lb?.ms ?? NaN)} ms, storage node ${f0(lo?.ms ?? NaN)} ms, ` +
          `node RSS ${f0(lo?.startMiB ?? NaN)} → ${f0(lo?.peakMiB ?? NaN)} MiB`,
      );
    }
    const loadAfter = load1();
    const mbps = (ms: number) => size / 1e6 / (ms / 1000);
    const oursRate = median(o.map((x) => mbps(x.ms)));
    const baseRate = median(b.map((x) => mbps(x.ms)));
    const share = oursRate / baseRate;
    const peakMiB = Math.max(warm.peakMiB, ...o.map((x) => x.peakMiB));
    const maxGrowth = peakMiB - idleMiB;
    const perUpload = median(o.map((x) => x.growthMiB));
    const metRate = share >= TARGET_SHARE;
    const metRss = maxGrowth < TARGET_RSS_MIB;

    const md: string[] = [];
    md.push(`## 4. Ingest of a ${f0(size / 1e6)} MB upload`);
    md.push('');
    md.push(
      `A ${dims.width}×${dims.height} PNG of RGB noise, zlib level 0 (${f1(size / 1e6)} MB = ${f1(size / 2 ** 20)} MiB), ` +
        `plan premium_max (100 MiB limit), multipart POST streamed from disk by the same client to both servers over ` +
        `loopback; time from the request to the response (MB = 10⁶ bytes). Storage node: \`pixelfox serve api storage ` +
        `projector\` (no worker, so no decode competes), i.e. the real path: token check, busboy, SHA-256 and ` +
        `markup scan while streaming, header inspection, dedupe claim, quota reservation, fsync + rename, ` +
        `\`ImageStored\` publish, read-your-writes wait for the projection. Baseline: a spawned \`node\` http server ` +
        `that streams the body to a temp file while hashing it, fsyncs and renames it. ${runs} run${runs === 1 ? '' : 's'} each after a ` +
        `warm-up${runs === 1 ? '' : ', interleaved'}. 1-min load ${loadBefore.toFixed(1)} → ${loadAfter.toFixed(1)}.`,
    );
    md.push('');
    md.push(
      table(
        ['', 'MB/s (median)', 'runs (ms)', 'RSS growth during each upload (MiB)'],
        [
          [
            'minimal node server (baseline)',
            f0(baseRate),
            b.map((x) => f0(x.ms)).join(', '),
            b.map((x) => f0(x.growthMiB)).join(', '),
          ],
          [
            'storage node',
            f0(oursRate),
            o.map((x) => f0(x.ms)).join(', '),
            o.map((x) => f0(x.growthMiB)).join(', '),
          ],
        ],
        ['l', 'r', 'l', 'l'],
      ),
    );
    md.push('');
    md.push(
      `**Storage node: ${pct(share)} of the baseline's MB/s** (target ≥ ${pct(TARGET_SHARE)}: ${metRate ? 'met' : 'not met'}); ` +
        `RSS growth ${f0(maxGrowth)} MiB: idle ${f0(idleMiB)} MiB before the first upload, peak ${f0(peakMiB)} MiB over ` +
        `all ${runs + 1} uploads (target < ${TARGET_RSS_MIB} MiB: ${metRss ? 'met' : 'not met'}).`,
    );
    md.push('');
    const notes: string[] = [];
    if (!metRate)
      notes.push(
        `Ingest at ${pct(share)} of the minimal server. On top of its work (stream, SHA-256, fsync) the storage ` +
          `node parses multipart (busboy), scans every byte for active content (MarkupScanner) and copies the ` +
          `first bytes for sniffing, all on its one JS thread, then inspects the header, claims the hash, reserves ` +
          `quota, publishes and waits for the projection (fixed ~tens of ms); run-to-run spread is large here.`,
      );
    if (!metRss) notes.push(`RSS grew ${f0(maxGrowth)} MiB during uploads (limit ${TARGET_RSS_MIB} MiB).`);
    return {
      id: 'ingest',
      title: 'Ingest of a 95 MB upload',
      rows: [
        {
          name: `ingest of a ${f0(size / 1e6)} MB PNG (median of ${runs})`,
          ours: `${f0(oursRate)} MB/s`,
          baseline: `${f0(baseRate)} MB/s (minimal node server)`,
          ratio: share,
          target: `≥ ${pct(TARGET_SHARE)} of baseline`,
          met: metRate,
          headline: `${pct(share)} of baseline`,
        },
        {
          name: 'storage node RSS growth: peak over all uploads − idle RSS',
          ours: `${f0(maxGrowth)} MiB`,
          baseline: `${f0(Math.max(...b.map((x) => x.growthMiB)))} MiB (minimal node server)`,
          ratio: null,
          target: `< ${TARGET_RSS_MIB} MiB`,
          met: metRss,
          headline: `idle ${f0(idleMiB)} → peak ${f0(peakMiB)} MiB; per upload median ${f0(perUpload)} MiB`,
        },
      ],
      markdown: md.join('\n'),
      notes,
      changes: [
        'The streaming active-content scan (services/storage-node/sniff.ts `MarkupScanner.push`) no longer copies ' +
          'every chunk to prepend the carry (only the junction of carry and chunk head is scanned separately), ' +
          "and rejects an anchor byte's hit by one lookup of the byte next to it before comparing patterns: 95 MB " +
          'of noise scan in ~85 ms instead of ~150–185 ms (same results on 20 000 randomly chunked bodies with ' +
          'and without payloads; test/unit/sniff.test.ts passes). In the runs around the change the node measured ' +
          '70–84 % of the baseline before and 84–92 % after (noisy machine).',
      ],
    };
  });
}

if (isMain(import.meta.url)) await runStandalone(runIngestBench);
