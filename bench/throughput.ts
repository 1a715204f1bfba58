// Row 3: sustained throughput. 8 concurrent uploaders push N distinct 2 MP JPEGs into a spawned node
// (all roles, job_queue_worker_count 2 = the cores here); measured from the first upload to the last
// image `completed`. Baseline: the variant set alone of the same images in this process, 2 at a time
// (the worker count), on the same CPUs: the first half of the images before the pipeline, the second
// half after it.
//
//   node --import tsx bench/throughput.ts          (BENCH_QUICK=1: 20 images)
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { makeUser, spawnNode } from '../test/helpers/stack.js';
import {
  backendCpuMs,
  benchEnv,
  cpuMs,
  benchSettings,
  f0,
  f1,
  f2,
  isMain,
  JOLLA,
  leanUpload,
  load1,
  machineCpuMs,
  pidsNamed,
  pct,
  pct1,
  profileEnv,
  runStandalone,
  sleep,
  table,
  tagJpeg,
  withCleanups,
  type BenchOptions,
  type BenchSection,
} from './lib.js';
import { renderVariantSet } from './variant-set.js';

export interface ThroughputBenchOptions extends BenchOptions {
  /** images (default 200; quick 20) */
  images?: number;
  /** concurrent uploaders (default 8) */
  uploaders?: number;
}

const WORKERS = 2;
const TARGET_SHARE = 0.9;
/** 2 MP (1632×1224, a quarter of the 8 MP photo), cut at a different place for every image: 200 of them,
 * twice (pipeline and baseline), fit the 15-minute budget of the whole `npm run bench` on 2 cores. The
 * pipeline's per-image costs besides the render (upload, events, projection) are fixed, so smaller images
 * would weigh them more. */
const W = 1632;
const H = 1224;
const MP = ((W * H) / 1e6).toFixed(1);

/** N distinct JPEGs (q90), crops of the photo at different offsets, each also tagged. */
async function makeImages(dir: string, count: number): Promise<string[]> {
  const { data, info } = await sharp(JOLLA).autoOrient().raw().toBuffer({ resolveWithObject: true });
  const files: string[] = [];
  for (let i = 0; i < count; i++) {
    const left = (i * 97) % (info.width - W);
    const top = (i * 61) % (info.height - H);
    const jpeg = await sharp(data, {
      raw: { width: info.width, height: info.height, channels: info.channels },
    })
      .extract({ left, top, width: W, height: H })
      .jpeg({ quality: 90 })
      .toBuffer();
    const file = path.join(dir, `img-${i}.jpg`);
    await writeFile(file, tagJpeg(jpeg, `throughput ${i}`));
    files.push(file);
  }
  return files;
}

/** `tasks` run by `width` concurrent loops; resolves with the wall time in ms. */
async function pool(count: number, width: number, task: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(width, count) }, async () => {
      for (;;) {
        const i = next++;
        if (i >= count) return;
        await task(i);
      }
    }),
  );
  return performance.now() - started;
}

export async function runThroughputBench(opts: ThroughputBenchOptions = {}): Promise<BenchSection> {
  const log = opts.log ?? console.log;
  const count = opts.images ?? (opts.quick ? 20 : 200);
  const uploaders = opts.uploaders ?? 8;
  return withCleanups(log, async (c) => {
    const env = await benchEnv(c);
    await benchSettings(env, { job_queue_worker_count: WORKERS });
    const work = path.join(env.dataDir, 'bench-throughput');
    await mkdir(work, { recursive: true });
    log(`throughput: generating ${count} distinct ${W}×${H} JPEGs`);
    const files = await makeImages(work, count);
    const meanKiB = (await Promise.all(files.map(async (f) => (await readFile(f)).length))).reduce(
      (a, b) => a + b / 1024 / files.length,
      0,
    );

    // The baseline renders the first half of the images before the pipeline and the second half after
    // it: the same images in total, and background load that drifts during the run hits both sides.
    const half = Math.ceil(count / 2);
    let baseCpuMs = 0;
    let baseMachineMs = 0;
    const baseline = async (label: string, from: number, to: number): Promise<number> => {
      const m0 = machineCpuMs();
      const cpu0 = process.cpuUsage();
      const ms = await pool(to - from, WORKERS, async (k) => {
        const i = from + k;
        const out = path.join(work, `out-${label}-${i}`);
        await renderVariantSet(files[i] ?? '', out);
        await rm(out, { recursive: true, force: true });
      });
      const cpu = process.cpuUsage(cpu0);
      baseCpuMs += (cpu.user + cpu.system) / 1000;
      baseMachineMs += machineCpuMs().busy - m0.busy;
      log(
        `  variant set alone (${label}): ${to - from} images in ${f0(ms)} ms = ${f2((to - from) / (ms / 1000))} images/s`,
      );
      return ms;
    };

    const node = await spawnNode(env, {
      roles: ['api', 'storage', 'worker', 'projector'],
      extra: profileEnv(),
    });
    c.teardown(() => node.stop());
    const user = await makeUser(env, 'premium_max');
    const sql = env.sql();
    const upload = async (bytes: Buffer, name: string): Promise<string> => {
      const r = await leanUpload(node.url, user.apiKey, bytes, name);
      if (r.status !== 201) throw new Error(`upload answered ${r.status}: ${JSON.stringify(r.body)}`);
      return String(r.body.image_uuid);
    };
    // Counted, not listed, and every 100 ms: the bench process shares the 2 cores with what it measures
    // (listing the images every 20 ms cost it and Postgres ~10 ms of CPU per image: 3 % of the rate).
    const waitCompleted = async (ids: Set<string>, deadlineMs: number): Promise<void> => {
      const deadline = Date.now() + deadlineMs;
      const list = [...ids];
      for (;;) {
        const [row] = await sql<{ completed: number; failed: number }[]>`
          select count(*) filter (where status = 'completed')::int as completed,
                 count(*) filter (where status = 'failed')::int as failed
          from images where id = any(${list}::uuid[])`;
        const { completed = 0, failed = 0 } = row ?? {};
        if (failed) throw new Error(`${failed} images failed`);
        if (completed === list.length) return;
        if (Date.now() > deadline) throw new Error(`${completed}/${list.length} completed at the deadline`);
        await sleep(100);
      }
    };

    // Warm-ups: the first render (library start-up) and the node's first job.
    log('  warm-up');
    await renderVariantSet(files[0] ?? '', path.join(work, 'warm'));
    await rm(path.join(work, 'warm'), { recursive: true, force: true });
    const warm = await upload(tagJpeg(await readFile(files[0] ?? ''), 'warm-up'), 'warm.jpg');
    await waitCompleted(new Set([warm]), 120_000);

    const loadBefore = load1();
    const beforeMs = await baseline('before', 0, half);

    const ids = new Set<string>();
    const nodePid = node.child.pid ?? 0;
    const nodeCpu0 = cpuMs(nodePid);
    const pgCpu0 = await backendCpuMs(sql, 'pixelfox');
    const natsPids = pidsNamed('nats-server');
    const natsCpu0 = natsPids.reduce((a, p) => a + cpuMs(p), 0);
    const machine0 = machineCpuMs();
    const benchCpu0 = process.cpuUsage();
    const started = performance.now();
    await pool(count, uploaders, async (i) => {
      ids.add(await upload(await readFile(files[i] ?? ''), `img-${i}.jpg`));
    });
    const uploadsDoneMs = performance.now() - started;
    await waitCompleted(ids, 30 * 60_000);
    const pipelineMs = performance.now() - started;
    const nodeCpuMs = cpuMs(nodePid) - nodeCpu0;
    const pgCpuMs = (await backendCpuMs(sql, 'pixelfox')) - pgCpu0;
    const natsCpuMs = natsPids.reduce((a, p) => a + cpuMs(p), 0) - natsCpu0;
    const machine1 = machineCpuMs();
    const benchCpu = process.cpuUsage(benchCpu0);
    const benchCpuMs = (benchCpu.user + benchCpu.system) / 1000;
    const machineMs = machine1.busy - machine0.busy;
    const pipelineRate = count / (pipelineMs / 1000);
    log(
      `  pipeline: ${count} images uploaded in ${f0(uploadsDoneMs)} ms, all completed after ${f0(pipelineMs)} ms = ${f2(pipelineRate)} images/s`,
    );
    await node.stop(); // its CPUs back to the baseline
    const afterMs = await baseline('after', half, count);
    const loadAfter = load1();

    const before = half / (beforeMs / 1000);
    const after = (count - half) / (afterMs / 1000);
    const baseRate = count / ((beforeMs + afterMs) / 1000);
    const share = pipelineRate / baseRate;
    const met = share >= TARGET_SHARE;
    const baseCpuPerImage = baseCpuMs / count;
    const nodeCpuPerImage = nodeCpuMs / count;
    const pgCpuPerImage = pgCpuMs / count;
    // CPU-bound on both sides: the CPU each image costs predicts the share on an idle machine.
    const cpuShare = baseCpuPerImage / (nodeCpuPerImage + pgCpuPerImage);
    const natsCpuPerImage = natsCpuMs / count;
    const benchCpuPerImage = benchCpuMs / count;
    const machinePerImage = machineMs / count;
    const baseMachinePerImage = baseMachineMs / count;
    const md: string[] = [];
    md.push(`## 3. Sustained throughput, ${uploaders} concurrent uploaders`);
    md.push('');
    md.push(
      `${count} distinct ${W}×${H} (${MP} MP) JPEGs, quality 90, mean ${f0(meanKiB)} KiB (crops of the 8 MP photo at ` +
        `different offsets). Spawned node with every role, job_queue_worker_count ${WORKERS} (= cores), plan ` +
        `premium_max (8 outputs per image), AVIF engine \`sharp\`; timed from the first upload to the last image ` +
        `\`completed\` in the read model. Baseline: the variant set alone of the same images in one process, ` +
        `${WORKERS} at a time: the first half before the pipeline, the second half after it. ` +
        `${os.availableParallelism()} cores; 1-min load ${loadBefore.toFixed(1)} → ${loadAfter.toFixed(1)}.`,
    );
    md.push('');
    md.push(
      table(
        ['run', 'images/s', 'wall (s)', 'CPU ms / image'],
        [
          [`variant set alone, images 1–${half}, before`, f2(before), f1(beforeMs / 1000), ''],
          [`variant set alone, images ${half + 1}–${count}, after`, f2(after), f1(afterMs / 1000), ''],
          [
            `variant set alone, all ${count} (baseline)`,
            f2(baseRate),
            f1((beforeMs + afterMs) / 1000),
            `${f0(baseCpuPerImage)} (machine: ${f0(baseMachinePerImage)})`,
          ],
          [
            `pipeline (all ${count} uploads answered after ${f1(uploadsDoneMs / 1000)} s)`,
            f2(pipelineRate),
            f1(pipelineMs / 1000),
            `${f0(nodeCpuPerImage)} node + ${f0(pgCpuPerImage)} Postgres + ${f1(natsCpuPerImage)} nats-server ` +
              `+ ${f1(benchCpuPerImage)} client (machine: ${f0(machinePerImage)})`,
          ],
        ],
        ['l', 'r', 'r', 'r'],
      ),
    );
    md.push('');
    md.push(
      `**Pipeline throughput: ${pct1(share)} of the baseline** (target ≥ ${pct(TARGET_SHARE)}: ${met ? 'met' : 'not met'}). ` +
        `By CPU per image (node + its Postgres backends vs the render alone; NATS not counted) the pipeline does ` +
        `${pct(cpuShare)} of the baseline's work rate: the part of a miss beyond that is the machine's other load. ` +
        `"machine" is all the CPU the machine spent over the run (/proc/stat), per image: with both cores busy ` +
        `on either side, the share is close to the ratio of the two. The uploading client here is node:http with ` +
        `a prebuilt multipart body and completion is counted every 100 ms (fetch() with FormData and listing ` +
        `the images every 20 ms cost ~10 ms of CPU per image on the same cores: ~3 points of this ratio).`,
    );
    md.push('');
    const notes: string[] = [];
    if (!met)
      notes.push(
        `Throughput ${pct1(share)} of the variant set alone (CPU per image: ${f0(nodeCpuPerImage)} ms node + ` +
          `${f0(pgCpuPerImage)} ms Postgres + ${f1(natsCpuPerImage)} ms nats-server vs ${f0(baseCpuPerImage)} ms; ` +
          `the whole machine ${f0(machinePerImage)} vs ${f0(baseMachinePerImage)} ms). The extra CPU per ` +
          `image is the upload (multipart, SHA-256, inspection, dedupe, quota, fsync), about a dozen events ` +
          `published and projected, and the read-your-writes wait: a fixed cost per image, so its share shrinks ` +
          `as images grow (a typical 8–12 MP photo renders 4–6× longer than these). The baseline's halves ran at ` +
          `${f2(before)} and ${f2(after)} images/s, so background load moved the rate by ` +
          `${pct(Math.abs(before - after) / Math.max(before, after))} within this one measurement.`,
      );
    return {
      id: 'throughput',
      title: 'Sustained throughput',
      rows: [
        {
          name: `sustained throughput, ${count} × ${MP} MP JPEG, ${uploaders} uploaders`,
          ours: `${f2(pipelineRate)} images/s`,
          baseline: `${f2(baseRate)} images/s (variant set alone, ${WORKERS} at a time)`,
          ratio: share,
          target: `≥ ${pct(TARGET_SHARE)} of baseline`,
          met,
          headline: `${pct1(share)} of baseline`,
        },
      ],
      markdown: md.join('\n'),
      notes,
      changes: [
        'Nodes run without V8 incremental marking (bin/pixelfox.mjs, set before any module loads). Traced here: ' +
          'V8 restarted incremental marking every ~0.4 s with 24 MB of old-generation slack left, and each cycle ' +
          'marked the whole ~34 MB heap of an all-roles node (~10 ms pause + ~20 ms of marking steps): ~11 ms of ' +
          'main-thread CPU per 2 MP image while the worker held decoded pixels across native renders. Major GCs ' +
          'per 200 images 86–88 → 4–10 (longest pause 46 ms); throughput 86–89 % → 90–92 % in alternating ' +
          'standalone runs. Semi-space sizes of 4, 8 and 64 MB and --no-memory-reducer changed nothing.',
        'The live projector applies events that arrive while a batch commits as one next batch instead of one ' +
          'transaction each (projections/projector.ts): a worker publishes its 9 results pipelined, but they ' +
          'arrived one at a time and each became begin/statements/commit. Postgres writes per image 33 → 27.',
        'The consumer runner sends at most one working() per second per message (shared/consumer.ts); the ' +
          'variant worker reported progress ~17 times per image, each a message to the server.',
      ],
    };
  });
}

if (isMain(import.meta.url)) await runStandalone(runThroughputBench);
