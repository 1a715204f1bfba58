// Real stacks for integration tests: a unique database, stream namespace and data directory per stack,
// against the machine's NATS and Postgres; everything is removed again in t.teardown.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { loadConfig, type Config } from '../../shared/config.js';
import { createSql, dropDatabase, ensureDatabase, type Sql } from '../../shared/db.js';
import { createLogger } from '../../shared/logger.js';
import { migrate } from '../../shared/migrate.js';
import { createUser } from '../../shared/users.js';
import type { Role, Stack } from '../../services/stack.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const FIXTURES = path.resolve(ROOT, '..', 'shared', 'fixtures', 'exif-samples', 'jpg');
export const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';
const PG_BASE = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/**
 * The environment of a PixelFox process in an isolated run (tests, chaos tests, benchmarks): its own
 * database, stream namespace and data directory, the run's secrets, then `extra` on top.
 */
export function serviceEnv(
  o: {
    natsUrl: string;
    databaseUrl: string;
    namespace: string;
    dataDir: string;
    secrets: Record<string, string>;
    logLevel?: string;
  },
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    NATS_URL: o.natsUrl,
    DATABASE_URL: o.databaseUrl,
    PIXELFOX_NAMESPACE: o.namespace,
    DATA_DIR: o.dataDir,
    LOG_LEVEL: o.logLevel ?? process.env.TEST_LOG_LEVEL ?? 'warn',
    SHUTDOWN_TIMEOUT_MS: '5000',
    ...o.secrets,
    ...extra,
  };
}

export interface TestEnv {
  id: string;
  namespace: string;
  databaseUrl: string;
  dataDir: string;
  secrets: { UPLOAD_TOKEN_SECRET: string; REPLICATION_SECRET: string; ADMIN_TOKEN: string };
  /** environment for a process of this test's system (node-specific values added by the caller) */
  env(extra?: Record<string, string>): Record<string, string>;
  sql(): Sql;
}

/** One isolated system: its own database, stream namespace and data dir; cleaned up at teardown. */
export async function testEnv(t: Teardown): Promise<TestEnv> {
  const id = randomBytes(5).toString('hex');
  const namespace = `t_${id}`;
  const databaseUrl = `${PG_BASE}/pf_test_${id}`;
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), `pixelfox-${id}-`));
  const secrets = {
    UPLOAD_TOKEN_SECRET: `upload-${randomBytes(16).toString('hex')}`,
    REPLICATION_SECRET: `replicate-${randomBytes(16).toString('hex')}`,
    ADMIN_TOKEN: `admin-${randomBytes(16).toString('hex')}`,
  };
  let sql: Sql | null = null;
  const log = createLogger('warn');
  await ensureDatabase(databaseUrl, log);
  await migrate(databaseUrl, log);
  t.teardown(async () => {
    await sql?.end({ timeout: 1 });
    await cleanupNamespace(namespace);
    await dropDatabase(databaseUrl).catch(() => undefined);
    await fs.rm(dataDir, { recursive: true, force: true });
  });
  return {
    id,
    namespace,
    databaseUrl,
    dataDir,
    secrets,
    env: (extra = {}) => serviceEnv({ natsUrl: NATS_URL, databaseUrl, namespace, dataDir, secrets }, extra),
    sql: () => (sql ??= createSql(databaseUrl, { max: 4 })),
  };
}

/** Deletes the stream and KV buckets of a namespace. */
export async function cleanupNamespace(namespace: string): Promise<void> {
  const nc = await connect({ servers: NATS_URL });
  try {
    const jsm = await jetstreamManager(nc);
    for await (const s of jsm.streams.list()) {
      const name = s.config.name;
      if (
        name === `${namespace}_events` ||
        name === `${namespace}_advisories` ||
        name.startsWith(`KV_${namespace}_`)
      )
        await jsm.streams.delete(name).catch(() => undefined);
    }
  } finally {
    await nc.close();
  }
}

export interface InProcess {
  stack: Stack;
  url: string;
  config: Config;
  close(): Promise<void>;
}

/** A node in this process (fast; for kill -9 tests use spawnNode). */
export async function startInProcess(
  env: TestEnv,
  opts: { roles?: readonly Role[]; extra?: Record<string, string> } = {},
): Promise<InProcess> {
  const port = await freePort();
  const e = env.env({ APP_PORT: String(port), PUBLIC_DOMAIN: `http://127.0.0.1:${port}`, ...opts.extra });
  const config = loadConfig(e, { requireSecrets: true });
  // Imported lazily: tests of the event store and projector do not load the whole service graph.
  const { startStack, ALL_ROLES } = await import('../../services/stack.js');
  const stack = await startStack(
    config,
    opts.roles ?? ALL_ROLES,
    createLogger(e.LOG_LEVEL ?? 'warn', { test: env.id }),
  );
  return { stack, url: stack.url, config, close: () => stack.close() };
}

export interface Spawned {
  url: string;
  port: number;
  child: ChildProcess;
  output(): string;
  kill9(): void;
  stop(): Promise<number | null>;
  exited: Promise<number | null>;
}

/** A node as a separate process (`pixelfox serve …`), so tests can kill -9 it. */
export async function spawnNode(
  env: TestEnv,
  opts: { roles?: readonly Role[]; extra?: Record<string, string>; port?: number } = {},
): Promise<Spawned> {
  const port = opts.port ?? (await freePort());
  const e = {
    ...process.env,
    ...env.env({ APP_PORT: String(port), PUBLIC_DOMAIN: `http://127.0.0.1:${port}`, ...opts.extra }),
  };
  const child = spawn(
    process.execPath,
    [
      path.join(ROOT, 'bin', 'pixelfox.mjs'),
      'serve',
      ...(opts.roles ?? ['api', 'storage', 'worker', 'projector']),
    ],
    {
      env: e,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  child.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`node exited early (${child.exitCode}):\n${out}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`node did not come up:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    port,
    child,
    output: () => out,
    exited,
    kill9: () => void child.kill('SIGKILL'),
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

export async function makeUser(env: TestEnv, plan: 'free' | 'premium' | 'premium_max' = 'premium_max') {
  const r = await createUser(env.sql(), `u-${randomBytes(4).toString('hex')}@test.local`, plan);
  return { id: r.user.id, apiKey: r.apiKey };
}

export interface UploadResult {
  status: number;
  body: Record<string, unknown>;
  headers: Headers;
}

/** The client flow: session, then direct upload to the node. */
export async function uploadFile(
  apiUrl: string,
  apiKey: string,
  bytes: Buffer,
  filename: string,
  opts: { sessionSize?: number } = {},
): Promise<UploadResult & { session?: Record<string, unknown> }> {
  const s = await fetch(`${apiUrl}/api/v1/upload/sessions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ file_size: opts.sessionSize ?? Math.max(1, bytes.length), filename }),
  });
  const session = (await s.json()) as Record<string, unknown>;
  if (s.status !== 201) return { status: s.status, body: session, headers: s.headers };
  const form = new FormData();
  form.append('file', new Blob([new Uint8Array(bytes)]), filename);
  const r = await fetch(String(session.upload_url), {
    method: 'POST',
    headers: { authorization: `Bearer ${String(session.token)}` },
    body: form,
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown>, headers: r.headers, session };
}

export async function getJson(
  url: string,
  apiKey?: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(url, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

/** Polls until `check` returns a value (no sleeps in assertions: waits on progress, with a deadline). */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | null | undefined | false>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function waitForStatus(
  apiUrl: string,
  apiKey: string,
  imageId: string,
  statuses = ['completed', 'failed'],
  timeoutMs = 60_000,
) {
  return waitFor(
    `image ${imageId} to reach ${statuses.join('|')}`,
    async () => {
      const r = await getJson(`${apiUrl}/api/v1/images/${imageId}/status`, apiKey);
      return r.status === 200 && statuses.includes(String(r.body.status)) ? r.body : null;
    },
    timeoutMs,
  );
}
