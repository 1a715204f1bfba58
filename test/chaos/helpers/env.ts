// The system under chaos: a test env (like test/helpers/stack.ts's testEnv) that may point at private
// NATS/Postgres servers, and spawned nodes that are always killed at teardown, whatever the test did.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import { createSql, dropDatabase, ensureDatabase, type Sql } from '../../../shared/db.js';
import { createLogger } from '../../../shared/logger.js';
import { migrate } from '../../../shared/migrate.js';
import { names, type Names } from '../../../streams/subjects.js';
import type { Role } from '../../../services/stack.js';
import {
  cleanupNamespace,
  NATS_URL,
  serviceEnv,
  spawnNode,
  type Spawned,
  type TestEnv,
} from '../../helpers/stack.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

const PG_BASE = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432';

export interface ChaosEnv extends TestEnv {
  natsUrl: string;
  names: Names;
  poolDir: string;
  /** a NATS connection of the test itself (to read the stream), opened on first use */
  js(): Promise<JetStreamClient>;
}

/**
 * One isolated system. With `natsUrl`/`pgBase` it lives on private servers (which the caller tears
 * down; nothing to clean there), otherwise on the machine's, cleaned up like testEnv does.
 */
export async function chaosEnv(
  t: Teardown,
  o: { natsUrl?: string; pgBase?: string } = {},
): Promise<ChaosEnv> {
  const id = randomBytes(5).toString('hex');
  const namespace = `t_${id}`;
  const natsUrl = o.natsUrl ?? NATS_URL;
  const databaseUrl = `${o.pgBase ?? PG_BASE}/pf_chaos_${id}`;
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), `pixelfox-chaos-${id}-`));
  const secrets = {
    UPLOAD_TOKEN_SECRET: `upload-${randomBytes(16).toString('hex')}`,
    REPLICATION_SECRET: `replicate-${randomBytes(16).toString('hex')}`,
    ADMIN_TOKEN: `admin-${randomBytes(16).toString('hex')}`,
  };
  const log = createLogger('warn');
  await ensureDatabase(databaseUrl, log);
  await migrate(databaseUrl, log);
  let sql: Sql | null = null;
  let nc: Awaited<ReturnType<typeof connect>> | null = null;
  t.teardown(async () => {
    await sql?.end({ timeout: 1 }).catch(() => undefined);
    await nc?.close().catch(() => undefined);
    if (!o.natsUrl) await cleanupNamespace(namespace).catch(() => undefined);
    if (!o.pgBase) await dropDatabase(databaseUrl).catch(() => undefined);
    await fs.rm(dataDir, { recursive: true, force: true });
  });
  return {
    id,
    namespace,
    databaseUrl,
    dataDir,
    secrets,
    natsUrl,
    names: names(namespace),
    poolDir: path.join(dataDir, 'pools', 'default'),
    env: (extra = {}) => serviceEnv({ natsUrl, databaseUrl, namespace, dataDir, secrets }, extra),
    sql: () => (sql ??= createSql(databaseUrl, { max: 4 })),
    js: async () => {
      nc ??= await connect({ servers: natsUrl.split(','), maxReconnectAttempts: -1, reconnectTimeWait: 250 });
      return jetstream(nc, { timeout: 10_000 });
    },
  };
}

/** Settings every load test needs: rate limits far above what the load generator sends. */
export async function setSetting(env: TestEnv, key: string, value: unknown): Promise<void> {
  await env.sql()`insert into settings (key, value) values (${key}, ${env.sql().json(value as never)})
                  on conflict (key) do update set value = excluded.value`;
}

export async function liftRateLimits(env: TestEnv): Promise<void> {
  await setSetting(env, 'upload_rate_limit_per_minute', 1_000_000);
  await setSetting(env, 'upload_user_rate_limit_per_minute', 1_000_000);
  await setSetting(env, 'api_rate_limit_per_minute', 1_000_000);
}

/**
 * A restartable `pixelfox serve <roles>` child: `restart()` starts it again on the same port (pool URLs
 * stay valid). Whatever is running at teardown is killed.
 */
export interface Proc {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  current(): Spawned | null;
  kill9(): Promise<void>;
  /** SIGTERM; resolves with the exit code */
  stop(): Promise<number | null>;
  restart(): Promise<void>;
  output(): string;
  pid(): number | undefined;
}

export async function proc(
  t: Teardown,
  env: TestEnv,
  name: string,
  roles: readonly Role[],
  opts: { port?: number; extra?: Record<string, string> } = {},
): Promise<Proc> {
  let node: Spawned | null = null;
  let port = opts.port ?? 0;
  let log = '';
  const start = async () => {
    const s = await spawnNode(env, {
      roles,
      ...(port ? { port } : {}),
      ...(opts.extra ? { extra: opts.extra } : {}),
    });
    port = s.port;
    node = s;
  };
  t.teardown(async () => {
    const n = node;
    node = null;
    if (n && n.child.exitCode === null && n.child.signalCode === null) {
      n.kill9();
      await n.exited;
    }
  });
  await start();
  const p: Proc = {
    name,
    get port() {
      return port;
    },
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    current: () => node,
    pid: () => node?.child.pid,
    output: () => log + (node?.output() ?? ''),
    async kill9() {
      const n = node;
      if (!n) return;
      node = null;
      log += n.output();
      n.kill9();
      await n.exited;
    },
    async stop() {
      const n = node;
      if (!n) return null;
      node = null;
      const code = await n.stop();
      log += n.output();
      return code;
    },
    async restart() {
      if (node) await p.kill9();
      await start();
    },
  };
  return p;
}
