// Memory check: peak RSS of a process rendering the full variant set (premium_max, default settings:
// AVIF engine, full-size AVIF cap avif_max_megapixels, the worker's sharp settings and media.ts's
// process-wide pixel budget) of a generated 50 MP JPEG must stay under 1 GiB. The render runs in a
// fresh child process (this file with --child); the parent samples its VmRSS every 10 ms and the child
// reports its own high-water mark (VmHWM). Baselines, same run: a child that only decodes the same JPEG
// into a raw pixel buffer (the floor for any decode-once pipeline), and the render as it was before the
// cap (full-size AVIF at full size, no pixel budget, full-size outputs overlapping).
//
//   node --import tsx bench/memory.ts              (BENCH_QUICK=1: 24 MP)
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import {
  f0,
  f1,
  isMain,
  JOLLA,
  load1,
  MiB,
  runStandalone,
  sampleRss,
  table,
  withCleanups,
  type BenchOptions,
  type BenchSection,
} from './lib.js';
import {
  configureMedia,
  DEFAULT_RENDER_PIXEL_BUDGET,
  probeImage,
  renderVariants,
} from '../services/variants/media.js';
import { entitlementsFor, planVariants } from '../services/variants/plan.js';
import { SETTING_DEFAULTS } from '../shared/settings.js';
import { PIXEL_LIMIT, renderVariantSet } from './variant-set.js';

export interface MemoryBenchOptions extends BenchOptions {
  /** megapixels of the generated JPEG (default 50; quick 24) */
  megapixels?: number;
  /** also render two at once, as a worker with job_queue_worker_count 2 may (default: not in quick) */
  concurrent?: boolean;
}

const LIMIT_MIB = 1024;
/**
 * decode: decode only. render / render2: one / two full sets at once, the product path (default
 * settings). uncapped / uncapped2: one / two full sets as before issue #9 (no AVIF cap, no pixel budget).
 * avif: decode + the uncapped full-size AVIF alone (what the AV1 encoder needs).
 */
type Mode = 'decode' | 'render' | 'render2' | 'uncapped' | 'uncapped2' | 'avif';

interface ChildReport {
  ms: number;
  maxRssMiB: number;
  outputs: number;
  /** the full-size AVIF's rendered size (product path) */
  avifSize: string;
}

/** The child: one job, then its report as the last stdout line. */
async function child(mode: Mode, src: string, out: string): Promise<void> {
  console.log('READY');
  const started = performance.now();
  let outputs: number;
  let avifSize = '';
  if (mode === 'avif' || mode === 'uncapped' || mode === 'uncapped2') {
    // as before issue #9: no pixel budget (full-size outputs overlap, concurrent renders too) and no cap
    configureMedia({ renderPixelBudget: 0 });
    const probe = await probeImage(src, { pixelLimit: PIXEL_LIMIT });
    const all = planVariants(
      {
        imageId: randomUUID(),
        datePath: '2026/01/01',
        format: probe.format,
        width: probe.width,
        height: probe.height,
      },
      entitlementsFor(SETTING_DEFAULTS, 'premium_max', {}),
    );
    const specs = mode === 'avif' ? all.filter((s) => s.variantType === 'avif') : all;
    const jobs = mode === 'uncapped2' ? [0, 1] : [0];
    const done = await Promise.all(
      jobs.map((j) =>
        renderVariants(src, probe, specs, (rel) => path.join(out, String(j), rel), {
          avifEngine: SETTING_DEFAULTS.avif_engine,
          pixelLimit: PIXEL_LIMIT,
        }),
      ),
    );
    outputs = done.reduce((a, d) => a + d.length, 0);
  } else if (mode === 'decode') {
    const { info } = await sharp(src, { limitInputPixels: false })
      .autoOrient()
      .raw()
      .toBuffer({ resolveWithObject: true });
    outputs = info.width > 0 ? 1 : 0;
  } else {
    const jobs = mode === 'render2' ? [0, 1] : [0];
    const done = await Promise.all(jobs.map((j) => renderVariantSet(src, path.join(out, String(j)))));
    outputs = done.reduce((a, d) => a + d.length, 0);
    const avif = done[0]?.find((r) => r.spec.variantType === 'avif');
    if (avif) avifSize = `${avif.width}×${avif.height}`;
  }
  // VmHWM of this process's own address space. Not getrusage's maxrss: Linux carries that across
  // execve, so a child forked from a big parent would report the parent's RSS at the fork.
  const hwm = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
  const report: ChildReport = {
    ms: performance.now() - started,
    maxRssMiB: Number(hwm?.[1] ?? 0) / 1024,
    outputs,
    avifSize,
  };
  console.log(JSON.stringify(report));
}

async function measure(mode: Mode, src: string, out: string) {
  const self = fileURLToPath(import.meta.url);
  const proc = spawn(process.execPath, [...process.execArgv, self, '--child', mode, src, out], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // Sampling starts when the child says it runs: right after the fork its RSS is still the parent's.
  let rss: ReturnType<typeof sampleRss> | null = null;
  let stdout = '';
  proc.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (!rss && stdout.includes('READY')) rss = sampleRss(proc.pid ?? 0);
  });
  const code = await new Promise<number | null>((r) => proc.once('exit', r));
  const sampled = (rss as ReturnType<typeof sampleRss> | null)?.stop() ?? { peakMiB: 0 };
  if (code !== 0) throw new Error(`memory child (${mode}) exited with ${code}`);
  const report = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as ChildReport;
  return { ...report, sampledPeakMiB: sampled.peakMiB, peakMiB: Math.max(report.maxRssMiB, sampled.peakMiB) };
}

export async function runMemoryBench(opts: MemoryBenchOptions = {}): Promise<BenchSection> {
  const log = opts.log ?? console.log;
  const mp = opts.megapixels ?? (opts.quick ? 24 : 50);
  const concurrent = opts.concurrent ?? !opts.quick;
  return withCleanups(log, async (c) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-bench-memory-'));
    c.teardown(() => rm(dir, { recursive: true, force: true }));
    // The photo scaled up to the size (4:3), so the encoders see photographic content, not noise.
    const width = Math.round(Math.sqrt((mp * 1e6 * 4) / 3));
    const height = Math.round((width * 3) / 4);
    const src = path.join(dir, `photo-${mp}mp.jpg`);
    await sharp(JOLLA).autoOrient().resize(width, height, { fit: 'fill' }).jpeg({ quality: 90 }).toFile(src);
    const size = (await stat(src)).size;
    log(`memory: ${width}×${height} JPEG (${f1((width * height) / 1e6)} MP, ${f1(size / MiB)} MiB)`);
    const loadBefore = load1();
    const decode = await measure('decode', src, path.join(dir, 'out-decode'));
    log(`  decode only: peak ${f0(decode.peakMiB)} MiB, ${f0(decode.ms)} ms`);
    const one = await measure('render', src, path.join(dir, 'out-1'));
    log(
      `  full variant set (defaults): peak ${f0(one.peakMiB)} MiB, ${f0(one.ms)} ms, ${one.outputs} outputs, AVIF ${one.avifSize}`,
    );
    const two = concurrent ? await measure('render2', src, path.join(dir, 'out-2')) : null;
    if (two) log(`  two at once (defaults): peak ${f0(two.peakMiB)} MiB, ${f0(two.ms)} ms`);
    const old = await measure('uncapped', src, path.join(dir, 'out-old'));
    log(`  before (no AVIF cap, no pixel budget): peak ${f0(old.peakMiB)} MiB, ${f0(old.ms)} ms`);
    const avif = await measure('avif', src, path.join(dir, 'out-avif'));
    log(`  uncapped full-size AVIF alone: peak ${f0(avif.peakMiB)} MiB, ${f0(avif.ms)} ms`);
    const old2 = concurrent ? await measure('uncapped2', src, path.join(dir, 'out-old2')) : null;
    if (old2) log(`  before, two at once: peak ${f0(old2.peakMiB)} MiB, ${f0(old2.ms)} ms`);
    const loadAfter = load1();
    const met = one.peakMiB < LIMIT_MIB && (two === null || two.peakMiB < LIMIT_MIB);
    const mpx = (width * height) / 1e6;
    const rawMiB = (width * height * 3) / MiB;
    const capMp = SETTING_DEFAULTS.avif_max_megapixels;
    const row = (label: string, r: { peakMiB: number; ms: number }) => [
      label,
      f0(r.peakMiB),
      f0(r.ms),
      `${(r.peakMiB / decode.peakMiB).toFixed(2)}×`,
    ];

    const md: string[] = [];
    md.push(`## 8. Memory: full variant set of a ${f0(mp)} MP JPEG`);
    md.push('');
    md.push(
      `A ${width}×${height} JPEG (${f1(mpx)} MP, quality 90, ${f1(size / MiB)} MiB; the test photo scaled up), ` +
        `rendered in a fresh \`node\` child exactly as the worker does it (bench/variant-set.ts: probe, premium_max ` +
        `plan with the default settings, ${one.outputs} outputs, AVIF via ${SETTING_DEFAULTS.avif_engine}, full-size ` +
        `AVIF capped at avif_max_megapixels = ${capMp} (here ${one.avifSize}), the process-wide pixel budget of ` +
        `${f0(DEFAULT_RENDER_PIXEL_BUDGET / 1e6)} MP (services/variants/media.ts), sharp's default concurrency, ` +
        `libvips cache off). Peak RSS = max(the child's own VmHWM, its VmRSS sampled every 10 ms). Baselines: a ` +
        `child that only decodes the JPEG to raw pixels (${f0(rawMiB)} MiB of RGB), and the render as it was ` +
        `before (no AVIF cap, no pixel budget). 1-min load ${loadBefore.toFixed(1)} → ${loadAfter.toFixed(1)}.`,
    );
    md.push('');
    md.push(
      table(
        ['child process', 'peak RSS (MiB)', 'time (ms)', 'RSS / decode only'],
        [
          row('decode only (baseline)', decode),
          row(`full variant set, defaults (AVIF ${one.avifSize})`, one),
          ...(two ? [row('two full sets at once, defaults (job_queue_worker_count 2)', two)] : []),
          row('before: full variant set, AVIF at full size, outputs overlapping', old),
          row('before: decode + the full-size AVIF alone (sharp/libheif/aom)', avif),
          ...(old2 ? [row('before: two full sets at once', old2)] : []),
        ],
        ['l', 'r', 'r', 'r'],
      ),
    );
    md.push('');
    md.push(
      `**Peak RSS ${f0(one.peakMiB)} MiB** for one ${f0(mp)} MP image (limit < ${LIMIT_MIB} MiB: ${met ? 'met' : 'not met'})` +
        (two ? `; ${f0(two.peakMiB)} MiB with two such images queued at once` : '') +
        `; before: ${f0(old.peakMiB)} MiB` +
        (old2 ? ` (${f0(old2.peakMiB)} MiB for two).` : '.'),
    );
    md.push('');
    const perMp = (avif.peakMiB - decode.peakMiB) / mpx;
    md.push(
      `Why a cap: the AV1 encoder (sharp → libheif → libaom) needs ~${f0(perMp)} MiB per megapixel on top of the ` +
        `decoded pixels, whatever the effort (0/1), thread count (1/2), allocator (glibc, MALLOC_ARENA_MAX=2, ` +
        `jemalloc), tune or input path (raw buffer or file); 4:4:4 needs half as much again. The memory is freed ` +
        `after the encode (RSS returns to the decoded size), so it is the encoder's working set, not ` +
        `fragmentation. The full-size AVIF is therefore capped at ${capMp} MP (aspect kept, real size in the ` +
        `VariantCreated event); the original and the full-size WebP keep all ${f1(mpx)} MP. A large image encodes ` +
        `its full-size outputs one at a time, and the worker renders at most ` +
        `${f0(DEFAULT_RENDER_PIXEL_BUDGET / 1e6)} MP of full-size pixels at once per process (an image above ` +
        `that renders alone), so two huge images in flight take turns instead of adding up.`,
    );
    const notes: string[] = [];
    if (!met) {
      notes.push(
        `Peak RSS ${f0(one.peakMiB)} MiB for a ${f0(mp)} MP image (limit ${LIMIT_MIB} MiB)` +
          (two ? `, ${f0(two.peakMiB)} MiB for two` : '') +
          `: lower avif_max_megapixels (the AV1 encoder needs ~${f0(perMp)} MiB per megapixel).`,
      );
    }
    return {
      id: 'memory',
      title: `Memory, ${f0(mp)} MP`,
      rows: [
        {
          name: `peak RSS, full variant set of a ${f0(mp)} MP JPEG`,
          ours: `${f0(one.peakMiB)} MiB`,
          baseline: `${f0(decode.peakMiB)} MiB (decode only)`,
          ratio: one.peakMiB / decode.peakMiB,
          target: `< ${LIMIT_MIB} MiB`,
          met,
          headline: two ? `two at once: ${f0(two.peakMiB)} MiB; before: ${f0(old.peakMiB)} MiB` : undefined,
        },
      ],
      markdown: md.join('\n'),
      notes,
      changes: [
        `Full-size AVIF capped at avif_max_megapixels (${capMp}), large images encode full-size outputs one at a ` +
          `time, and a process-wide pixel budget of ${f0(DEFAULT_RENDER_PIXEL_BUDGET / 1e6)} MP ` +
          `(services/variants/media.ts, plan.ts): ${f0(old.peakMiB)} → ${f0(one.peakMiB)} MiB peak RSS for a ` +
          `${f0(mp)} MP image, ${f0(old.ms)} → ${f0(one.ms)} ms.`,
      ],
    };
  });
}

if (isMain(import.meta.url)) {
  const args = process.argv.slice(2);
  if (args[0] === '--child') await child(args[1] as Mode, args[2] ?? '', args[3] ?? '');
  else await runStandalone(runMemoryBench);
}
