// Variant benchmark: our decode-once pipeline (services/variants/media.ts) against the vips CLI
// doing the same outputs one process per output, plus sharp's clone() as the other decode strategy,
// and an AVIF engine comparison (sharp/aom vs ffmpeg/SVT-AV1) on speed, bytes and SSIM.
//
//   node --import tsx bench/variants.ts [--runs 5] [--input path/to/photo.jpg] [--no-write]
//
// sharp is imported here only to measure (SSIM, and the clone() strategy as a comparison); the
// service's processing stays in media.ts.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import * as prettier from 'prettier';
import sharp from 'sharp';
import {
  DEFAULT_AVIF_ENGINE,
  DEFAULT_PARALLEL_OUTPUTS,
  ENCODER_SETTINGS,
  configureMedia,
  detectAvifEngines,
  probeImage,
  renderVariants,
} from '../services/variants/media.js';
import type { AvifEngine, EncoderSettings, RenderedVariant } from '../services/variants/media.js';
import { planVariants } from '../services/variants/plan.js';
import type { VariantSpec } from '../services/variants/plan.js';

const run = promisify(execFile);
// sharp's prebuilt libvips sets VIPSHOME to its build prefix in this process; a child vips CLI would
// then look for its loadable modules (Debian's vips-heif.so) there and lose AVIF support.
function cliEnv(): NodeJS.ProcessEnv {
  const { VIPSHOME: _vipshome, ...env } = process.env;
  return env;
}
const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const DEFAULT_INPUT = path.resolve(ROOT, '../shared/fixtures/exif-samples/jpg/mobile/jolla.jpg');
const IMAGE_ID = '00000000-0000-4000-8000-000000000001';
const DATE_PATH = '2024/01/01';

export interface VariantBenchOptions {
  /** input photo (default: the 8 MP Jolla phone JPEG from the fixtures) */
  input?: string;
  /** timed runs per configuration; the median is reported (default 5, after one warm-up) */
  runs?: number;
  /** libvips threads for our runs (default: all cores, as the vips CLI uses) */
  concurrency?: number;
  /** where to write the markdown section; null = do not write (default bench/RESULTS-variants.md) */
  resultsPath?: string | null;
  log?: (line: string) => void;
}

export interface TimedConfig {
  name: string;
  /** median wall time */
  msPerImage: number;
  /** median CPU time (user + system, this process and its children) */
  cpuMsPerImage: number;
  runs: number[];
}

export interface VariantBenchResult {
  input: string;
  width: number;
  height: number;
  pipelines: TimedConfig[];
  baselineMs: number;
  baselineCpuMs: number;
  /** decode once into a raw buffer (ours) vs sharp clone() per output, same outputs */
  decodeStrategy: { input: string; raw: TimedConfig | undefined; clone: TimedConfig | undefined }[];
  bytes: Record<string, Record<string, number>>;
  ssim: Record<string, { webp: number | null; avif: number | null }>;
  avifEngines: {
    name: string;
    engine: AvifEngine;
    msPerImage: number;
    cpuMsPerImage: number;
    bytes: number;
    ssim1024: number;
    ssimFull: number;
    runs: number;
  }[];
  peakRssMiB: number;
  /** 1-minute load average before and after the run: other work on the machine skews the timings */
  load: { before: number; after: number };
  /** full variant set rendered once in a fresh process per AVIF engine */
  memory: {
    engine: AvifEngine;
    parallel: number;
    ms: number;
    nodeMaxRssMiB: number;
    childMaxRssMiB: number | null;
  }[];
  markdown: string;
}

export async function runVariantBench(opts: VariantBenchOptions = {}): Promise<VariantBenchResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const input = path.resolve(opts.input ?? DEFAULT_INPUT);
  const runs = Math.max(1, opts.runs ?? 5);
  const defaultConcurrency = sharp.concurrency();
  // what production runs with unless the worker calls configureMedia: sharp's own default
  const concurrency = opts.concurrency ?? defaultConcurrency;
  const altConcurrency = concurrency === os.availableParallelism() ? 1 : os.availableParallelism();
  const work = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-variant-bench-'));
  const engines = await detectAvifEngines();
  const loadBefore = os.loadavg()[0] ?? 0;
  configureMedia({ concurrency });

  try {
    const probe = await probeImage(input);
    const specs = planVariants(
      {
        imageId: IMAGE_ID,
        datePath: DATE_PATH,
        format: probe.format,
        width: probe.width,
        height: probe.height,
      },
      { original: true, webp: true, avif: true },
    );
    log(
      `input ${path.basename(input)} ${probe.width}x${probe.height} ${probe.format}; ${specs.length} outputs; ${runs} runs + 1 warm-up`,
    );

    let seq = 0;
    const freshDir = async (label: string): Promise<string> => {
      const dir = path.join(work, `${label}-${seq++}`);
      await mkdir(dir, { recursive: true });
      return dir;
    };
    const ours = async (
      engine: AvifEngine,
      label: string,
      only?: VariantSpec[],
      encoders?: Partial<EncoderSettings>,
      src = input,
      parallel = DEFAULT_PARALLEL_OUTPUTS,
    ) => {
      const dir = await freshDir(label);
      const started = performance.now();
      const p = await probeImage(src);
      const out = await renderVariants(src, p, only ?? specs, (rel) => path.join(dir, rel), {
        avifEngine: engine,
        parallel,
        ...(encoders ? { encoders } : {}),
      });
      return { ms: performance.now() - started, out, dir };
    };

    // --- full variant set: ours (each AVIF engine), clone() strategy, vips CLI --------------------
    const lastOut: Record<string, { out: RenderedVariant[]; dir: string }> = {};
    const vipsDirs: string[] = [];
    const BASELINE = 'vips CLI, one process per output (baseline)';
    const configs: Config[] = [
      {
        name: 'ours, decode once, AVIF via sharp',
        once: async () => {
          const r = await ours('sharp', 'ours-sharp');
          lastOut.sharp = r;
          return r.ms;
        },
      },
    ];
    if (engines.ffmpeg) {
      configs.push({
        name: 'ours, decode once, AVIF via ffmpeg/SVT-AV1',
        once: async () => {
          const r = await ours('ffmpeg', 'ours-ffmpeg');
          lastOut.ffmpeg = r;
          return r.ms;
        },
      });
    }
    configs.push({
      name: 'ours, AVIF via sharp, one output at a time',
      once: async () => (await ours('sharp', 'ours-sharp-seq', undefined, undefined, input, 1)).ms,
    });
    configs.push({
      name: `ours, AVIF via sharp, sharp.concurrency(${altConcurrency})`,
      once: async () => {
        configureMedia({ concurrency: altConcurrency });
        try {
          return (await ours('sharp', 'ours-sharp-alt')).ms;
        } finally {
          configureMedia({ concurrency });
        }
      },
    });
    // The same photo as a PNG: no shrink-on-load, a costlier decode, so re-decoding per output shows.
    const png = path.join(work, 'input.png');
    await sharp(input).autoOrient().png().toFile(png);
    const pngSpecs = planVariants(
      { imageId: IMAGE_ID, datePath: DATE_PATH, format: 'png', width: probe.width, height: probe.height },
      { original: true, webp: true, avif: true },
    );
    const CLONE_JPEG = 'sharp clone() per output (re-decodes the file)';
    const OURS_PNG = 'PNG input: ours, decode once';
    const CLONE_PNG = 'PNG input: sharp clone() per output';
    configs.push(
      {
        name: OURS_PNG,
        once: async () => (await ours('sharp', 'ours-png', pngSpecs, undefined, png)).ms,
      },
      {
        name: CLONE_PNG,
        once: async () => {
          const dir = await freshDir('clone-png');
          const started = performance.now();
          await cloneStrategy(png, pngSpecs, dir);
          return performance.now() - started;
        },
      },
      {
        name: CLONE_JPEG,
        once: async () => {
          const dir = await freshDir('clone');
          const started = performance.now();
          await cloneStrategy(input, specs, dir);
          return performance.now() - started;
        },
      },
      {
        name: BASELINE,
        once: async () => {
          const dir = await freshDir('vips');
          vipsDirs.push(dir);
          // vips does not create directories
          for (const spec of specs)
            await mkdir(path.dirname(path.join(dir, spec.relPath)), { recursive: true });
          const started = performance.now();
          for (const [cmd, args] of vipsCommands(input, specs, dir)) await run(cmd, args, { env: cliEnv() });
          return performance.now() - started;
        },
      },
    );
    const timed = await timeInterleaved(configs, runs, log);
    const decodeNames = [OURS_PNG, CLONE_PNG, CLONE_JPEG];
    const pipelines = timed.filter((p) => !decodeNames.includes(p.name));
    const byName = (name: string): TimedConfig | undefined => timed.find((p) => p.name === name);
    const decodeStrategy: VariantBenchResult['decodeStrategy'] = [
      { input: `JPEG (${specs.length} outputs)`, raw: pipelines[0], clone: byName(CLONE_JPEG) },
      {
        input: `PNG of the same photo (${pngSpecs.length} outputs)`,
        raw: byName(OURS_PNG),
        clone: byName(CLONE_PNG),
      },
    ];
    const baseline: TimedConfig = timed.find((p) => p.name === BASELINE) ?? {
      name: BASELINE,
      msPerImage: Number.NaN,
      cpuMsPerImage: Number.NaN,
      runs: [],
    };
    const vipsDir = vipsDirs.at(-1) ?? '';

    // --- bytes per output and SSIM of the full-size formats ---------------------------------------
    const bytes: Record<string, Record<string, number>> = {};
    const addBytes = (col: string, out: RenderedVariant[]): void => {
      for (const r of out) (bytes[r.spec.variantType] ??= {})[col] = r.bytes;
    };
    if (lastOut.sharp) addBytes('ours (sharp AVIF)', lastOut.sharp.out);
    if (lastOut.ffmpeg) addBytes('ours (ffmpeg AVIF)', lastOut.ffmpeg.out);
    for (const spec of specs) {
      const buf = await readFile(path.join(vipsDir, spec.relPath)).catch(() => null);
      if (buf) (bytes[spec.variantType] ??= {})['vips CLI'] = buf.length;
    }

    const reference1024 = await grey(input, 1024);
    const ssimOf = async (file: string): Promise<number | null> => {
      const img = await grey(file, 1024).catch(() => null);
      return img ? ssim(reference1024, img) : null;
    };
    const fullFile = (dir: string, fmt: 'webp' | 'avif'): string =>
      path.join(dir, `variants/${DATE_PATH}/${IMAGE_ID}.${fmt}`);
    const ssimTable: VariantBenchResult['ssim'] = {};
    for (const [col, dir] of [
      ['ours (sharp AVIF)', lastOut.sharp?.dir],
      ['ours (ffmpeg AVIF)', lastOut.ffmpeg?.dir],
      ['vips CLI', vipsDir],
    ] as const) {
      if (!dir) continue;
      ssimTable[col] = {
        webp: await ssimOf(fullFile(dir, 'webp')),
        avif: await ssimOf(fullFile(dir, 'avif')),
      };
    }

    // --- AVIF engines: the full-size AVIF alone -----------------------------------------------------
    const fullAvif = specs.filter((s) => s.variantType === 'avif');
    const referenceFull = await grey(input, null);
    const sh = ENCODER_SETTINGS.avifSharp;
    const avifSharp = (effort: number): Partial<EncoderSettings> => ({ avifSharp: { ...sh, effort } });
    const candidates: {
      name: string;
      engine: AvifEngine;
      encoders?: Partial<EncoderSettings>;
      runs: number;
    }[] = [
      {
        name: `sharp q${sh.quality} effort ${sh.effort} ${sh.chromaSubsampling} (default)`,
        engine: 'sharp',
        runs,
      },
      ...[0, 2]
        .filter((e) => e !== sh.effort)
        .map((e) => ({
          name: `sharp q${sh.quality} effort ${e} ${sh.chromaSubsampling}`,
          engine: 'sharp' as const,
          encoders: avifSharp(e),
          runs,
        })),
    ];
    if (engines.ffmpeg) {
      const svt = ENCODER_SETTINGS.avifSvt;
      candidates.push(
        {
          name: `ffmpeg SVT-AV1 preset ${svt.preset} crf ${svt.crf} (default for ffmpeg)`,
          engine: 'ffmpeg',
          runs,
        },
        {
          name: `ffmpeg SVT-AV1 preset ${svt.preset} crf 28`,
          engine: 'ffmpeg',
          encoders: { avifSvt: { ...svt, crf: 28 } },
          runs,
        },
      );
    }
    const lastAvif = new Map<string, Awaited<ReturnType<typeof ours>>>();
    const avifTimes = await timeInterleaved(
      candidates.map((c) => ({
        name: `AVIF ${c.name}`,
        runs: c.runs,
        once: async () => {
          const r = await ours(c.engine, 'avif', fullAvif, c.encoders);
          lastAvif.set(c.name, r);
          return r.ms;
        },
      })),
      runs,
      log,
    );
    const avifEngines: VariantBenchResult['avifEngines'] = [];
    for (const [i, c] of candidates.entries()) {
      const last = lastAvif.get(c.name);
      const file = last ? fullFile(last.dir, 'avif') : '';
      const encodedBy = last?.out[0]?.encoder;
      if (encodedBy !== c.engine) log(`  note: ${c.name} was encoded by ${encodedBy ?? 'nothing'}`);
      avifEngines.push({
        name: c.name,
        engine: c.engine,
        msPerImage: avifTimes[i]?.msPerImage ?? Number.NaN,
        cpuMsPerImage: avifTimes[i]?.cpuMsPerImage ?? Number.NaN,
        bytes: last?.out[0]?.bytes ?? 0,
        ssim1024: ssim(reference1024, await grey(file, 1024)),
        ssimFull: ssim(referenceFull, await grey(file, null)),
        runs: c.runs,
      });
    }

    const memory: VariantBenchResult['memory'] = [];
    const memCases: [AvifEngine, number][] = [
      ['sharp', 1],
      ['sharp', DEFAULT_PARALLEL_OUTPUTS],
      ...(engines.ffmpeg ? [['ffmpeg', DEFAULT_PARALLEL_OUTPUTS] as [AvifEngine, number]] : []),
    ];
    for (const [engine, parallel] of memCases) {
      const m = await measureMemory(engine, parallel, input, concurrency);
      log(
        `memory, AVIF via ${engine}, ${parallel} at once: node ${m.nodeMaxRssMiB} MiB, ` +
          `encoder child ${m.childMaxRssMiB ?? '–'} MiB, ${m.ms} ms`,
      );
      memory.push(m);
    }

    const peakRssMiB = process.resourceUsage().maxRSS / 1024;
    const result: Omit<VariantBenchResult, 'markdown'> = {
      input,
      width: probe.width,
      height: probe.height,
      pipelines,
      baselineMs: baseline.msPerImage,
      baselineCpuMs: baseline.cpuMsPerImage,
      decodeStrategy,
      bytes,
      ssim: ssimTable,
      avifEngines,
      peakRssMiB,
      load: { before: loadBefore, after: os.loadavg()[0] ?? 0 },
      memory,
    };
    const resultsPath =
      opts.resultsPath === undefined ? path.join(HERE, 'RESULTS-variants.md') : opts.resultsPath;
    // formatted like every other file in the repo, so `prettier --check .` stays green
    const markdown = await prettier.format(
      await renderMarkdown(result, { runs, concurrency, defaultConcurrency, specs }),
      {
        ...(await prettier.resolveConfig(resultsPath ?? path.join(HERE, 'RESULTS-variants.md'))),
        parser: 'markdown',
      },
    );
    log('');
    log(markdown);
    if (resultsPath) {
      await writeFile(resultsPath, markdown);
      log(`written to ${path.relative(process.cwd(), resultsPath)}`);
    }
    return { ...result, markdown };
  } finally {
    configureMedia({ concurrency: defaultConcurrency });
    await rm(work, { recursive: true, force: true });
  }
}

interface Config {
  name: string;
  once: () => Promise<number>;
  /** timed runs for this config (default: the bench's runs); slow reference points use 1 */
  runs?: number;
}

/**
 * One warm-up each, then round-robin rounds (A B C, A B C, ...): on a shared machine, background
 * load then hits every configuration alike instead of whichever happened to run during it.
 */
async function timeInterleaved(
  configs: Config[],
  runs: number,
  log: (line: string) => void,
): Promise<TimedConfig[]> {
  for (const c of configs) await c.once(); // warm-up: library initialisation, page cache
  const wall = configs.map((): number[] => []);
  const cpu = configs.map((): number[] => []);
  for (let round = 0; round < runs; round++) {
    for (const [i, c] of configs.entries()) {
      if (round >= (c.runs ?? runs)) continue;
      const cpuBefore = await cpuTimeMs();
      wall[i]?.push(await c.once());
      cpu[i]?.push((await cpuTimeMs()) - cpuBefore);
    }
  }
  return configs.map((c, i) => {
    const xs = wall[i] ?? [];
    const cfg = {
      name: c.name,
      msPerImage: median(xs),
      cpuMsPerImage: median(cpu[i] ?? []),
      runs: xs.map(Math.round),
    };
    log(
      `${c.name.padEnd(64)} ${cfg.msPerImage.toFixed(0).padStart(6)} ms, ` +
        `${cfg.cpuMsPerImage.toFixed(0).padStart(6)} ms CPU  (${cfg.runs.join(', ')})`,
    );
    return cfg;
  });
}

/**
 * CPU time so far of this process (all threads, so libvips' too) plus its reaped children (vips CLI,
 * ffmpeg), from /proc/self/stat utime+stime+cutime+cstime in USER_HZ ticks (100 per second on
 * Linux). Unlike wall time it barely moves when other work shares the machine. Elsewhere: this
 * process only.
 */
async function cpuTimeMs(): Promise<number> {
  const stat = await readFile('/proc/self/stat', 'utf8').catch(() => null);
  if (stat) {
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3 (state)
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
    return ticks * 10;
  }
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Renders the full set once in a fresh process (this file with --mem-child) and reads its peak RSS. */
async function measureMemory(
  engine: AvifEngine,
  parallel: number,
  input: string,
  concurrency: number,
): Promise<VariantBenchResult['memory'][number]> {
  const self = fileURLToPath(import.meta.url);
  const args = [
    ...process.execArgv,
    self,
    ...[
      '--mem-child',
      engine,
      '--parallel',
      String(parallel),
      '--input',
      input,
      '--concurrency',
      String(concurrency),
    ],
  ];
  const { stdout } = await run(process.execPath, args, { maxBuffer: 1 << 20 });
  const last = stdout.trim().split('\n').at(-1) ?? '{}';
  const parsed = JSON.parse(last) as Omit<VariantBenchResult['memory'][number], 'engine' | 'parallel'>;
  return { engine, parallel, ...parsed };
}

/**
 * --mem-child: render once, print { ms, nodeMaxRssMiB, childMaxRssMiB }. An encoder child's peak
 * (ffmpeg/SVT-AV1) is sampled from /proc/<pid>/status VmHWM while it runs (Linux; null elsewhere).
 */
async function memChild(
  engine: AvifEngine,
  parallel: number,
  input: string,
  concurrency: number,
): Promise<void> {
  configureMedia({ concurrency });
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-variant-mem-'));
  let childPeakKiB: number | null = null;
  const sample = async (): Promise<void> => {
    const tasks = await readdir(`/proc/${process.pid}/task`).catch(() => []);
    for (const tid of tasks) {
      const children = await readFile(`/proc/${process.pid}/task/${tid}/children`, 'utf8').catch(() => '');
      for (const pid of children.split(' ').filter(Boolean)) {
        const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
        if (!/^Name:\s+ffmpeg$/m.test(status)) continue; // not tsx's esbuild service
        const hwm = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
        if (hwm) childPeakKiB = Math.max(childPeakKiB ?? 0, Number(hwm));
      }
    }
  };
  const timer = setInterval(() => void sample(), 10);
  try {
    const started = performance.now();
    const probe = await probeImage(input);
    const specs = planVariants(
      {
        imageId: IMAGE_ID,
        datePath: DATE_PATH,
        format: probe.format,
        width: probe.width,
        height: probe.height,
      },
      { original: true, webp: true, avif: true },
    );
    await renderVariants(input, probe, specs, (rel) => path.join(dir, rel), { avifEngine: engine, parallel });
    const ms = Math.round(performance.now() - started);
    // VmHWM, not getrusage's maxRSS: Linux carries ru_maxrss across fork+exec, so a child spawned by a
    // large parent would report the parent's size.
    const hwm = /VmHWM:\s+(\d+) kB/.exec(await readFile('/proc/self/status', 'utf8').catch(() => ''))?.[1];
    const nodeMaxRssMiB = Math.round((hwm ? Number(hwm) : process.resourceUsage().maxRSS) / 1024);
    const childMaxRssMiB = childPeakKiB === null ? null : Math.round(childPeakKiB / 1024);
    console.log(JSON.stringify({ ms, nodeMaxRssMiB, childMaxRssMiB }));
  } finally {
    clearInterval(timer);
    await rm(dir, { recursive: true, force: true });
  }
}

/** The same outputs as our pipeline, made by the vips CLI: one process (and one decode) per output. */
function vipsCommands(input: string, specs: VariantSpec[], dir: string): [string, string[]][] {
  const sh = ENCODER_SETTINGS;
  const av = sh.avifSharp;
  // bitdepth 8: Debian's vips 8.14 defaults AVIF to 12 bit; subsample-mode on = 4:2:0 like ours
  const avifOpts = `compression=av1,Q=${av.quality},effort=${av.effort},bitdepth=8,subsample-mode=${av.chromaSubsampling === '4:2:0' ? 'on' : 'off'},strip`;
  const saveOpts: Record<string, string> = {
    webp: `Q=${sh.webp.quality},effort=${sh.webp.effort},strip`,
    avif: avifOpts,
    jpeg: `Q=${sh.jpeg.quality},strip`,
    png: `compression=${sh.png.compressionLevel},strip`,
    gif: 'strip',
  };
  const cmds: [string, string[]][] = [];
  for (const spec of specs) {
    const out = path.join(dir, spec.relPath);
    const target = `${out}[${saveOpts[spec.format] ?? ''}]`;
    if (spec.maxWidth === null) {
      cmds.push(['vips', ['copy', input, target]]);
    } else {
      cmds.push(['vipsthumbnail', [input, '--size', `${spec.maxWidth}x`, '-o', target]]);
    }
  }
  return cmds;
}

/**
 * The alternative decode strategy: one sharp pipeline per output via clone() of a file input, with
 * as many outputs in flight as renderVariants uses, so only the decode strategy differs.
 */
async function cloneStrategy(input: string, specs: VariantSpec[], dir: string): Promise<void> {
  const base = sharp(input, { failOn: 'error', sequentialRead: true }).autoOrient();
  const sh = ENCODER_SETTINGS;
  const one = async (spec: VariantSpec): Promise<void> => {
    let img = base.clone();
    if (spec.maxWidth !== null) img = img.resize({ width: spec.maxWidth, withoutEnlargement: true });
    switch (spec.format) {
      case 'webp':
        img = img.webp(sh.webp);
        break;
      case 'avif':
        img = img.avif(sh.avifSharp);
        break;
      case 'jpeg':
        img = img.jpeg(sh.jpeg);
        break;
      case 'png':
        img = img.png(sh.png);
        break;
      case 'gif':
        img = img.gif();
        break;
      default: {
        const unreachable: never = spec.format;
        throw new Error(String(unreachable));
      }
    }
    const out = path.join(dir, spec.relPath);
    await mkdir(path.dirname(out), { recursive: true });
    await writeFile(out, await img.toBuffer());
  };
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < specs.length) {
      const spec = specs[next++];
      if (spec) await one(spec);
    }
  };
  await Promise.all(Array.from({ length: DEFAULT_PARALLEL_OUTPUTS }, lane));
}

export interface Grey {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Greyscale pixels, optionally resized to a width (lanczos3), for SSIM. */
async function grey(file: string, width: number | null): Promise<Grey> {
  let img = sharp(file, { failOn: 'none' }).autoOrient();
  if (width !== null) img = img.resize({ width });
  const { data, info } = await img.greyscale().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/**
 * Mean SSIM (Wang et al. 2004) over every 8×8 window (stride 1), on 8-bit greyscale, with the
 * standard constants C1 = (0.01·255)², C2 = (0.03·255)². Uniform windows, via summed-area tables.
 */
export function ssim(a: Grey, b: Grey, win = 8): number {
  if (a.width !== b.width || a.height !== b.height)
    throw new Error(`SSIM: ${a.width}x${a.height} vs ${b.width}x${b.height}`);
  const { width: w, height: h } = a;
  const W = w + 1;
  const sa = new Float64Array(W * (h + 1));
  const sb = new Float64Array(W * (h + 1));
  const saa = new Float64Array(W * (h + 1));
  const sbb = new Float64Array(W * (h + 1));
  const sab = new Float64Array(W * (h + 1));
  for (let y = 0; y < h; y++) {
    let ra = 0;
    let rb = 0;
    let raa = 0;
    let rbb = 0;
    let rab = 0;
    for (let x = 0; x < w; x++) {
      const va = a.data[y * w + x] ?? 0;
      const vb = b.data[y * w + x] ?? 0;
      ra += va;
      rb += vb;
      raa += va * va;
      rbb += vb * vb;
      rab += va * vb;
      const i = (y + 1) * W + x + 1;
      const up = y * W + x + 1;
      sa[i] = (sa[up] ?? 0) + ra;
      sb[i] = (sb[up] ?? 0) + rb;
      saa[i] = (saa[up] ?? 0) + raa;
      sbb[i] = (sbb[up] ?? 0) + rbb;
      sab[i] = (sab[up] ?? 0) + rab;
    }
  }
  const box = (s: Float64Array, x: number, y: number): number =>
    (s[(y + win) * W + x + win] ?? 0) -
    (s[y * W + x + win] ?? 0) -
    (s[(y + win) * W + x] ?? 0) +
    (s[y * W + x] ?? 0);
  const n = win * win;
  const c1 = (0.01 * 255) ** 2;
  const c2 = (0.03 * 255) ** 2;
  let total = 0;
  let count = 0;
  for (let y = 0; y + win <= h; y++) {
    for (let x = 0; x + win <= w; x++) {
      const ma = box(sa, x, y) / n;
      const mb = box(sb, x, y) / n;
      const va = box(saa, x, y) / n - ma * ma;
      const vb = box(sbb, x, y) / n - mb * mb;
      const cov = box(sab, x, y) / n - ma * mb;
      total += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
      count++;
    }
  }
  return total / count;
}

function median(xs: number[]): number {
  const s = [...xs].sort((p, q) => p - q);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

async function versionOf(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { env: cliEnv() });
    return stdout.split('\n')[0]?.trim() ?? '?';
  } catch {
    return 'not installed';
  }
}

async function renderMarkdown(
  r: Omit<VariantBenchResult, 'markdown'>,
  ctx: { runs: number; concurrency: number; defaultConcurrency: number; specs: VariantSpec[] },
): Promise<string> {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const ramGiB = (os.totalmem() / 1024 ** 3).toFixed(0);
  const kb = (n: number | undefined): string => (n === undefined ? '–' : (n / 1024).toFixed(1));
  const f3 = (n: number | null | undefined): string => (n === null || n === undefined ? '–' : n.toFixed(4));
  const lines: string[] = [];
  lines.push('## Variants: decode once, derive all');
  lines.push('');
  lines.push(
    `Machine: ${os.availableParallelism()} cores (${cpu}), ${ramGiB} GiB RAM, ${os.platform()} ${os.release()}; Node ${process.version}; ` +
      `sharp ${sharp.versions.sharp ?? '?'} with libvips ${sharp.versions.vips}; CLI: ${await versionOf('vips', ['--version'])}; ` +
      `${(await versionOf('ffmpeg', ['-hide_banner', '-version'])).replace(/ Copyright.*/, '')}. Date: ${new Date().toISOString().slice(0, 10)}. ` +
      `1-min load average ${r.load.before.toFixed(1)} before, ${r.load.after.toFixed(1)} after the run` +
      (Math.max(r.load.before, r.load.after) > os.availableParallelism()
        ? ' (busy machine: absolute times are inflated; compare the interleaved ratios).'
        : '.'),
  );
  lines.push('');
  lines.push(
    `Input: \`${path.relative(ROOT, r.input)}\` (${r.width}×${r.height}, ${((r.width * r.height) / 1e6).toFixed(1)} MP). ` +
      `Outputs (${ctx.specs.length}): ${ctx.specs.map((s) => s.variantType).join(', ')}. ` +
      `Median of ${ctx.runs} runs after a warm-up; ours includes probe, decode, encode and the fsync'd atomic writes; ` +
      `our runs use sharp.concurrency(${ctx.concurrency})${ctx.concurrency === ctx.defaultConcurrency ? " (sharp's default here, what the worker gets)" : ''} ` +
      `unless stated (each vips CLI process uses all cores) and encode ` +
      `${DEFAULT_PARALLEL_OUTPUTS} outputs at once, as does the clone() comparison; the vips CLI runs its commands one after another.`,
  );
  lines.push('');
  lines.push(
    'Reproduce: `node --import tsx bench/variants.ts` (add `--runs N`, `--input file.jpg`, `--no-write`).',
  );
  lines.push('');
  lines.push(...summary(r));
  lines.push('');
  lines.push('### Full variant set, per image');
  lines.push('');
  lines.push('| pipeline | ms / image | ratio to vips CLI | CPU ms / image | CPU ratio | runs (ms) |');
  lines.push('| --- | ---: | ---: | ---: | ---: | --- |');
  for (const p of r.pipelines) {
    lines.push(
      `| ${p.name} | ${p.msPerImage.toFixed(0)} | ${(p.msPerImage / r.baselineMs).toFixed(2)}× | ` +
        `${p.cpuMsPerImage.toFixed(0)} | ${(p.cpuMsPerImage / r.baselineCpuMs).toFixed(2)}× | ${p.runs.join(', ')} |`,
    );
  }
  lines.push('');
  lines.push('### Decode once vs sharp clone()');
  lines.push('');
  lines.push(
    '| input | decode once, raw buffer: ms (CPU ms) | clone() per output: ms (CPU ms) | raw / clone, wall | raw / clone, CPU |',
  );
  lines.push('| --- | ---: | ---: | ---: | ---: |');
  const f0 = (n: number | undefined): string => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(0));
  for (const d of r.decodeStrategy) {
    const [raw, clone] = [d.raw, d.clone];
    lines.push(
      `| ${d.input} | ${f0(raw?.msPerImage)} (${f0(raw?.cpuMsPerImage)}) | ${f0(clone?.msPerImage)} (${f0(clone?.cpuMsPerImage)}) | ` +
        `${raw && clone ? (raw.msPerImage / clone.msPerImage).toFixed(2) : '–'}× | ` +
        `${raw && clone ? (raw.cpuMsPerImage / clone.cpuMsPerImage).toFixed(2) : '–'}× |`,
    );
  }
  lines.push('');
  const cols = [...new Set(Object.values(r.bytes).flatMap((row) => Object.keys(row)))];
  lines.push('### Bytes per output (KiB)');
  lines.push('');
  lines.push(`| output | ${cols.join(' | ')} |`);
  lines.push(`| --- | ${cols.map(() => '---:').join(' | ')} |`);
  for (const [type, row] of Object.entries(r.bytes))
    lines.push(`| ${type} | ${cols.map((c) => kb(row[c])).join(' | ')} |`);
  lines.push('');
  lines.push('### SSIM vs the original (greyscale, both resized to 1024 wide, 8×8 windows)');
  lines.push('');
  lines.push('| pipeline | full-size WebP | full-size AVIF |');
  lines.push('| --- | ---: | ---: |');
  for (const [name, s] of Object.entries(r.ssim)) lines.push(`| ${name} | ${f3(s.webp)} | ${f3(s.avif)} |`);
  lines.push('');
  lines.push('### AVIF engines (full-size AVIF only)');
  lines.push('');
  lines.push('| engine / settings | ms / image | CPU ms / image | KiB | SSIM @1024 | SSIM full res | runs |');
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const e of r.avifEngines) {
    lines.push(
      `| ${e.name} | ${e.msPerImage.toFixed(0)} | ${e.cpuMsPerImage.toFixed(0)} | ${kb(e.bytes)} | ${f3(e.ssim1024)} | ${f3(e.ssimFull)} | ${e.runs} |`,
    );
  }
  lines.push('');
  lines.push('### Memory: the full set rendered once in a fresh process');
  lines.push('');
  lines.push('| AVIF engine | outputs at once | ms | node peak RSS (MiB) | encoder child peak RSS (MiB) |');
  lines.push('| --- | ---: | ---: | ---: | ---: |');
  for (const m of r.memory) {
    lines.push(`| ${m.engine} | ${m.parallel} | ${m.ms} | ${m.nodeMaxRssMiB} | ${m.childMaxRssMiB ?? '–'} |`);
  }
  lines.push('');
  lines.push(`Peak RSS of the whole benchmark process: ${r.peakRssMiB.toFixed(0)} MiB.`);
  lines.push('');
  return lines.join('\n');
}

/** Findings computed from this run's numbers, so a re-run cannot leave stale prose behind. */
function summary(r: Omit<VariantBenchResult, 'markdown'>): string[] {
  const oursDefault = r.pipelines.find((p) =>
    p.name.startsWith(`ours, decode once, AVIF via ${DEFAULT_AVIF_ENGINE}`),
  );
  const ratio = oursDefault ? oursDefault.msPerImage / r.baselineMs : Number.NaN;
  const cpuRatio = oursDefault ? oursDefault.cpuMsPerImage / r.baselineCpuMs : Number.NaN;
  const ssims = Object.values(r.ssim)
    .flatMap((s) => [s.webp, s.avif])
    .filter((x): x is number => x !== null);
  const defaults = r.avifEngines.filter((e) => e.name.includes('(default'));
  const mem = (engine: AvifEngine): string => {
    const m = r.memory.find((x) => x.engine === engine);
    if (!m) return 'n/a';
    return m.childMaxRssMiB === null
      ? `${m.nodeMaxRssMiB} MiB`
      : `${m.nodeMaxRssMiB} MiB + ${m.childMaxRssMiB} MiB encoder child`;
  };
  const out = [
    '**Summary**',
    '',
    `- Our full set (default AVIF engine \`${DEFAULT_AVIF_ENGINE}\`) takes **${ratio.toFixed(2)}×** the vips CLI's time ` +
      `(target ≤ 1.0×: ${ratio <= 1 ? 'met' : 'not met'}) and **${cpuRatio.toFixed(2)}×** its CPU time.`,
  ];
  for (const d of r.decodeStrategy) {
    if (!d.raw || !d.clone) continue;
    const q = d.raw.msPerImage / d.clone.msPerImage;
    const qc = d.raw.cpuMsPerImage / d.clone.cpuMsPerImage;
    const verdict = (x: number): string => (x < 0.95 ? 'less' : x > 1.05 ? 'more' : 'about the same');
    out.push(
      `- ${d.input}: decoding once into a raw buffer takes ${verdict(q)} time than sharp \`clone()\` ` +
        `(${q.toFixed(2)}× wall) and ${verdict(qc)} CPU (${qc.toFixed(2)}×).`,
    );
  }
  out.push(
    `- SSIM of every full-size WebP/AVIF vs the original: ≥ ${Math.min(...ssims).toFixed(4)} (target ≥ 0.95).`,
  );
  for (const e of defaults) {
    out.push(
      `- AVIF via ${e.engine} (${e.name.replace(/ \(default.*\)/, '')}): ${e.msPerImage.toFixed(0)} ms ` +
        `(${e.cpuMsPerImage.toFixed(0)} ms CPU), ${(e.bytes / 1024).toFixed(1)} KiB, ` +
        `SSIM ${e.ssim1024.toFixed(4)}; peak memory for the whole set ${mem(e.engine)}.`,
    );
  }
  return out;
}

type CliOptions = VariantBenchOptions & { memChild?: AvifEngine; parallel?: number };

function parseArgs(argv: string[]): CliOptions {
  const opts: CliOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--runs') opts.runs = Number(argv[++i]);
    else if (arg === '--input') opts.input = argv[++i] ?? DEFAULT_INPUT;
    else if (arg === '--concurrency') opts.concurrency = Number(argv[++i]);
    else if (arg === '--no-write') opts.resultsPath = null;
    else if (arg === '--parallel') opts.parallel = Number(argv[++i]);
    else if (arg === '--mem-child') opts.memChild = argv[++i] === 'ffmpeg' ? 'ffmpeg' : 'sharp';
    else throw new Error(`unknown argument ${arg ?? ''}`);
  }
  return opts;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = parseArgs(process.argv.slice(2));
  if (args.memChild) {
    await memChild(
      args.memChild,
      args.parallel ?? DEFAULT_PARALLEL_OUTPUTS,
      path.resolve(args.input ?? DEFAULT_INPUT),
      args.concurrency ?? sharp.concurrency(),
    );
  } else await runVariantBench(args);
}
