// Shared pieces of the benchmark scripts: isolated environments (own database `pf_bench_*`, own stream
// namespace, own data dir), cleanup, statistics, RSS sampling, machine facts and the row format that
// bench/run.ts collects into BENCHMARKS.md.
//
// Every row is a ratio to a baseline measured in the same run: the machine is shared and noisy, so an
// absolute number alone says little.
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import postgres from 'postgres';
import { dropDatabase, ensureDatabase, type Sql } from '../shared/db.js';
import { createLogger } from '../shared/logger.js';
import { migrate } from '../shared/migrate.js';
import { cleanupNamespace, NATS_URL, serviceEnv, type TestEnv } from '../test/helpers/stack.js';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BENCH_DIR, '..');
/** The 8 MP (3264×2448) Jolla phone photo of the shared fixtures. */
export const JOLLA = path.resolve(ROOT, '../shared/fixtures/exif-samples/jpg/mobile/jolla.jpg');
const PG_BASE = process.env.BENCH_PG_URL ?? process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432';

/** `BENCH_QUICK=1`: every benchmark small, for a smoke run. */
export function isQuick(): boolean {
  return ['1', 'true', 'yes'].includes((process.env.BENCH_QUICK ?? '').toLowerCase());
}

export type Log = (line: string) => void;
export const consoleLog: Log = (line) => console.log(line);

export interface BenchOptions {
  quick?: boolean;
  log?: Log;
}

/** One result line: ours against the baseline measured in the same run. */
export interface BenchRow {
  /** what was measured, e.g. "upload → completed, 8 MP JPEG" */
  name: string;
  ours: string;
  baseline: string;
  /** ours / baseline in the unit of the target (a time ratio, a throughput share, ...) */
  ratio: number | null;
  /** e.g. "≤ 1.0×", "≥ 90 %", "≤ 150 ms" */
  target: string;
  /** null: informational, no target */
  met: boolean | null;
  /** the number the target is about when it is not the ratio (e.g. "+48 ms", "41 MiB") */
  headline?: string;
}

export interface BenchSection {
  /** short id, used by BENCH_ONLY and in the summary table */
  id: string;
  title: string;
  rows: BenchRow[];
  /** the detailed markdown section (starts with a `##` heading) */
  markdown: string;
  /** what bounds a missed target */
  notes?: string[];
  /** changes made in the product because of this benchmark (what, where, measured effect) */
  changes?: string[];
}

// ---------------------------------------------------------------------------------------------
// Cleanup

export interface Cleanups {
  teardown(fn: () => unknown): void;
  /** Runs every registered cleanup, last registered first; errors are logged, not thrown. */
  run(): Promise<void>;
}

export function cleanups(log: Log = consoleLog): Cleanups {
  const fns: (() => unknown)[] = [];
  let running: Promise<void> | null = null;
  const run = () =>
    (running ??= (async () => {
      while (fns.length) {
        const fn = fns.pop();
        try {
          await fn?.();
        } catch (err) {
          log(`  cleanup failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      running = null;
    })());
  return { teardown: (fn) => void fns.push(fn), run };
}

/** `try { ... } finally { cleanups }`, and the same on Ctrl-C, so no database or stream is left behind. */
export async function withCleanups<T>(log: Log, body: (c: Cleanups) => Promise<T>): Promise<T> {
  const c = cleanups(log);
  const onSignal = () => {
    log('interrupted: cleaning up');
    void c.run().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await body(c);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await c.run();
  }
}

/**
 * An isolated system like test/helpers/stack.ts's testEnv, named `pf_bench_<id>` (database) and
 * `pfb_<id>` (streams, KV buckets), removed again by the cleanups.
 */
export async function benchEnv(c: Cleanups): Promise<TestEnv> {
  const id = randomBytes(5).toString('hex');
  const namespace = `pfb_${id}`;
  const databaseUrl = `${PG_BASE}/pf_bench_${id}`;
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), `pixelfox-bench-${id}-`));
  const secrets = {
    UPLOAD_TOKEN_SECRET: `upload-${randomBytes(16).toString('hex')}`,
    REPLICATION_SECRET: `replicate-${randomBytes(16).toString('hex')}`,
    ADMIN_TOKEN: `admin-${randomBytes(16).toString('hex')}`,
  };
  let sql: Sql | null = null;
  const log = createLogger('warn');
  c.teardown(async () => {
    await sql?.end({ timeout: 1 });
    await cleanupNamespace(namespace);
    await dropDatabase(databaseUrl).catch(() => undefined);
    await fs.rm(dataDir, { recursive: true, force: true });
  });
  await ensureDatabase(databaseUrl, log);
  await migrate(databaseUrl, log);
  return {
    id,
    namespace,
    databaseUrl,
    dataDir,
    secrets,
    env: (extra = {}) =>
      serviceEnv(
        {
          natsUrl: NATS_URL,
          databaseUrl,
          namespace,
          dataDir,
          secrets,
          logLevel: process.env.BENCH_LOG_LEVEL ?? 'warn',
        },
        extra,
      ),
    // Its own application_name: the benches count the CPU of the node's Postgres backends ('pixelfox').
    sql: () =>
      (sql ??= postgres(databaseUrl, {
        max: 4,
        onnotice: () => {},
        connection: { search_path: 'rm,public', application_name: 'pixelfox-bench' },
        types: {
          bigint: {
            to: 20,
            from: [20],
            serialize: (x: number) => String(x),
            parse: (x: string) => Number(x),
          },
        },
        transform: { undefined: null },
      })),
  };
}

/**
 * Extra environment for a spawned node: with `BENCH_CPU_PROF=<dir>` it writes a V8 CPU profile there when
 * it exits (what `node --cpu-prof` does, via bench/cpu-prof-preload.mjs: Node 20 does not take
 * --cpu-prof in NODE_OPTIONS); summarise it with `node --import tsx bench/profile-top.ts <file>`.
 */
export function profileEnv(): Record<string, string> {
  const dir = process.env.BENCH_CPU_PROF;
  if (!dir) return {};
  const preload = pathToFileURL(path.join(BENCH_DIR, 'cpu-prof-preload.mjs')).href;
  return { NODE_OPTIONS: `--import=${preload}`, BENCH_CPU_PROF: path.resolve(dir) };
}

/** Settings a benchmark needs: the upload rate limits out of the way, the worker count pinned. */
export async function benchSettings(env: TestEnv, extra: Record<string, unknown> = {}): Promise<void> {
  const values: Record<string, unknown> = {
    upload_rate_limit_per_minute: 1_000_000,
    upload_user_rate_limit_per_minute: 1_000_000,
    job_queue_worker_count: 2,
    avif_engine: 'sharp',
    ...extra,
  };
  const sql = env.sql();
  for (const [key, value] of Object.entries(values)) {
    await sql`insert into settings (key, value, updated_at) values (${key}, ${sql.json(value as never)}, now())
              on conflict (key) do update set value = excluded.value, updated_at = now()`;
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.min(s.length, Math.max(1, Math.ceil((p / 100) * s.length)));
  return s[rank - 1] ?? Number.NaN;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '–');
export const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '–');
export const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '–');
export const pct = (r: number) => (Number.isFinite(r) ? `${(r * 100).toFixed(0)} %` : '–');
/** One decimal: for a share measured against a target close to it (89.6 % is not 90 %). */
export const pct1 = (r: number) => (Number.isFinite(r) ? `${(r * 100).toFixed(1)} %` : '–');
export const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Memory of another process

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number | null {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export interface RssSampler {
  /** VmRSS when sampling started */
  startMiB: number;
  /** stop sampling; peak is the larger of the sampled maximum and the kernel's high-water mark
   * (VmHWM, reset when sampling started where the kernel allows it) */
  stop(): { startMiB: number; peakMiB: number; growthMiB: number; samples: number };
}

/** Samples /proc/<pid>/status VmRSS every `everyMs` (default 10 ms) until stopped. */
export function sampleRss(pid: number, everyMs = 10): RssSampler {
  // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0, same user or root).
  let hwmReset = false;
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    hwmReset = true;
  } catch {
    // not allowed: the sampled maximum alone
  }
  const startKiB = statusKiB(pid, 'VmRSS') ?? 0;
  let maxKiB = startKiB;
  let samples = 0;
  const timer = setInterval(() => {
    const v = statusKiB(pid, 'VmRSS');
    if (v !== null) {
      samples++;
      if (v > maxKiB) maxKiB = v;
    }
  }, everyMs);
  return {
    startMiB: startKiB / 1024,
    stop: () => {
      clearInterval(timer);
      const hwm = hwmReset ? (statusKiB(pid, 'VmHWM') ?? 0) : 0;
      const last = statusKiB(pid, 'VmRSS') ?? 0;
      const peak = Math.max(maxKiB, hwm, last);
      return {
        startMiB: startKiB / 1024,
        peakMiB: peak / 1024,
        growthMiB: (peak - startKiB) / 1024,
        samples,
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Inputs

/**
 * The same JPEG with a comment segment (COM, 0xFFFE) carrying `tag`, inserted after the APPn segments
 * (EXIF stays where readers expect it). Pixels are untouched, so the work per image stays identical,
 * but the bytes (and the SHA-256 the upload dedupes on) differ.
 */
export function tagJpeg(jpeg: Buffer, tag: string): Buffer {
  if (jpeg[0] !== 0xff || jpeg[1] !== 0xd8) throw new Error('not a JPEG');
  let at = 2;
  while (at + 4 <= jpeg.length && jpeg[at] === 0xff) {
    const marker = jpeg[at + 1] ?? 0;
    if (marker < 0xe0 || marker > 0xef) break; // first non-APPn segment
    at += 2 + jpeg.readUInt16BE(at + 2);
  }
  const payload = Buffer.from(`pixelfox bench ${tag}`, 'latin1');
  const seg = Buffer.alloc(4 + payload.length);
  seg[0] = 0xff;
  seg[1] = 0xfe;
  seg.writeUInt16BE(2 + payload.length, 2);
  payload.copy(seg, 4);
  return Buffer.concat([jpeg.subarray(0, at), seg, jpeg.subarray(at)]);
}

// ---------------------------------------------------------------------------------------------
// Machine and markdown

export interface Machine {
  cores: number;
  cpu: string;
  ramGiB: number;
  kernel: string;
  node: string;
}

export function machine(): Machine {
  return {
    cores: os.availableParallelism(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU',
    ramGiB: Math.round(os.totalmem() / 1024 ** 3),
    kernel: `${os.platform()} ${os.release()}`,
    node: process.version,
  };
}

export function load1(): number {
  return os.loadavg()[0] ?? 0;
}

export function table(header: string[], rows: string[][], align?: ('l' | 'r')[]): string {
  const sep = header.map((_, i) => ((align?.[i] ?? 'l') === 'r' ? '---:' : '---'));
  return [header, sep, ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
}

export function verdict(met: boolean | null): string {
  return met === null ? 'info' : met ? 'met' : '**missed**';
}

export function rowsTable(rows: BenchRow[]): string {
  return table(
    ['measurement', 'ours', 'baseline (same run)', 'ratio', 'target', 'result'],
    rows.map((r) => [
      r.name,
      r.ours,
      r.baseline,
      r.ratio === null ? '–' : `${f2(r.ratio)}×`,
      r.target,
      verdict(r.met),
    ]),
    ['l', 'r', 'r', 'r', 'l', 'l'],
  );
}

/** One line per row for the console. */
export function printRows(rows: BenchRow[], log: Log): void {
  for (const r of rows) {
    log(
      `  ${r.name}: ours ${r.ours} vs baseline ${r.baseline}` +
        (r.ratio === null ? '' : ` → ratio ${f2(r.ratio)}×`) +
        (r.headline ? ` (${r.headline})` : '') +
        ` [target ${r.target}: ${r.met === null ? 'info' : r.met ? 'met' : 'MISSED'}]`,
    );
  }
}

/** True when the module at `url` is the script node was started with. */
export function isMain(url: string): boolean {
  return Boolean(process.argv[1]) && url === pathToFileURL(path.resolve(process.argv[1] ?? '')).href;
}

/** Standalone entry of a bench script: run it, print its rows and its markdown. */
export async function runStandalone(run: (o: BenchOptions) => Promise<BenchSection>): Promise<void> {
  const section = await run({ quick: isQuick(), log: consoleLog });
  console.log('');
  printRows(section.rows, consoleLog);
  console.log('');
  console.log(section.markdown);
}

// ---------------------------------------------------------------------------------------------
// CPU time of other processes (load-independent cost: on a busy machine wall-clock rates move, CPU
// seconds per unit of work much less)

const CLK_TCK = 100; // USER_HZ: 100 on every Linux architecture node runs on

/** User + system CPU milliseconds a process has used so far (/proc/<pid>/stat), or 0 when it is gone. */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // fields after the command name (which may contain spaces) start at index 2 = field 3
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    return ((utime + stime) * 1000) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * CPU ms of the Postgres backends serving `application_name` in `sql`'s database (they run on this
 * machine, loopback). The database matters: every PixelFox process names itself 'pixelfox', including
 * other stacks (tests) running on the same server at the same time.
 */
export async function backendCpuMs(sql: Sql, applicationName: string): Promise<number> {
  const rows = await sql<{ pid: number }[]>`
    select pid from pg_stat_activity
    where application_name = ${applicationName} and datname = current_database() and pid <> pg_backend_pid()`;
  return rows.reduce((a, r) => a + cpuMs(r.pid), 0);
}

/** CPU ms the whole machine spent busy and idle so far (/proc/stat, all cores summed). */
export function machineCpuMs(): { busy: number; idle: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const busy = f.slice(0, 8).reduce((a, b) => a + b, 0) - idle;
    return { busy: (busy * 1000) / CLK_TCK, idle: (idle * 1000) / CLK_TCK };
  } catch {
    return { busy: 0, idle: 0 };
  }
}

/** Pids of the processes named `name` (/proc/<pid>/comm), e.g. the local nats-server. */
export function pidsNamed(name: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === name) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

// ---------------------------------------------------------------------------------------------
// A lean HTTP client for load generators: node:http with keep-alive and a multipart body built once
// as one Buffer. fetch() with FormData costs the bench process ~3 ms of CPU per upload, on the same 2
// cores as the server it measures; this costs a fraction of that.

const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 64 });

function request(
  url: string,
  method: string,
  headers: Record<string, string | number>,
  body: Buffer,
): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: keepAlive }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON: kept as text
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Upload session + multipart upload (what test/helpers/stack.ts `uploadFile` does with fetch). */
export async function leanUpload(
  apiUrl: string,
  apiKey: string,
  bytes: Buffer,
  filename: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const sessionBody = Buffer.from(JSON.stringify({ file_size: bytes.length, filename }));
  const s = await request(
    `${apiUrl}/api/v1/upload/sessions`,
    'POST',
    {
      authorization: `Bearer ${apiKey}`,
      'content-type': 'application/json',
      'content-length': sessionBody.length,
    },
    sessionBody,
  );
  const session = s.body as Record<string, unknown>;
  if (s.status !== 201) return { status: s.status, body: session };
  const boundary = `----pixelfox-bench-${randomBytes(8).toString('hex')}`;
  const body = Buffer.concat([
    Buffer.from(
      `--${boundary}\r\ncontent-disposition: form-data; name="file"; filename="${filename}"\r\n` +
        `content-type: application/octet-stream\r\n\r\n`,
    ),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  const r = await request(
    String(session.upload_url),
    'POST',
    {
      authorization: `Bearer ${String(session.token)}`,
      'content-type': `multipart/form-data; boundary=${boundary}`,
      'content-length': body.length,
    },
    body,
  );
  return { status: r.status, body: r.body as Record<string, unknown> };
}
