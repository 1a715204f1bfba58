// Private NATS and Postgres servers for chaos tests: the machine's servers are shared by everything
// (CI included) and must never be restarted, so every test that restarts a dependency starts its own on
// free loopback ports, with its own data directory, and tears it down again.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, mkdtempSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { freePort } from '../../helpers/stack.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export const NATS_BIN = process.env.NATS_SERVER_BIN ?? '/usr/sbin/nats-server';
export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function waitPort(port: number, open: boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await portOpen(port)) !== open) {
    if (Date.now() > deadline) throw new Error(`${what}: port ${port} not ${open ? 'open' : 'closed'}`);
    await sleep(50);
  }
}

// --- NATS -------------------------------------------------------------------------------------------

export interface NatsServer {
  name: string;
  port: number;
  url: string;
  storeDir: string;
  /** SIGKILL (a crash); data in storeDir is kept */
  kill9(): Promise<void>;
  /** SIGTERM and wait for the exit (an operator's restart) */
  stop(): Promise<void>;
  /** again with the same arguments (same port, same store dir) */
  start(): Promise<void>;
  running(): boolean;
  output(): string;
}

interface NatsOptions {
  name: string;
  port: number;
  storeDir: string;
  cluster?: { name: string; port: number; routes: string[] };
}

function natsServer(o: NatsOptions): NatsServer {
  let child: ChildProcess | null = null;
  let out = '';
  const args = ['-a', '127.0.0.1', '-p', String(o.port), '-js', '-sd', o.storeDir, '--server_name', o.name];
  if (o.cluster)
    args.push(
      '--cluster_name',
      o.cluster.name,
      '--cluster',
      `nats://127.0.0.1:${o.cluster.port}`,
      '--routes',
      o.cluster.routes.join(','),
    );
  const exited = (c: ChildProcess) =>
    c.exitCode !== null || c.signalCode !== null
      ? Promise.resolve()
      : new Promise<void>((r) => c.once('exit', () => r()));
  const server: NatsServer = {
    name: o.name,
    port: o.port,
    url: `nats://127.0.0.1:${o.port}`,
    storeDir: o.storeDir,
    running: () => child !== null,
    output: () => out,
    async start() {
      if (child) return;
      const c = spawn(NATS_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      c.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
      c.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
      child = c;
      await waitPort(o.port, true, 15_000, `nats ${o.name}`).catch((err: unknown) => {
        throw new Error(`${String(err)}\n${out}`);
      });
    },
    async kill9() {
      const c = child;
      if (!c) return;
      child = null;
      c.kill('SIGKILL');
      await exited(c);
    },
    async stop() {
      const c = child;
      if (!c) return;
      child = null;
      c.kill('SIGTERM');
      await exited(c);
    },
  };
  return server;
}

/** One private JetStream server on a free port (its own store dir), stopped and removed at teardown. */
export async function startPrivateNats(t: Teardown, name = 'solo'): Promise<NatsServer> {
  const storeDir = await fs.mkdtemp(path.join(os.tmpdir(), `pixelfox-nats-${name}-`));
  const s = natsServer({
    name: `${name}-${randomBytes(3).toString('hex')}`,
    port: await freePort(),
    storeDir,
  });
  t.teardown(async () => {
    await s.kill9();
    await fs.rm(storeDir, { recursive: true, force: true });
  });
  await s.start();
  await waitForJetStream(s.url, 20_000);
  return s;
}

/** A 3-node JetStream cluster on loopback; ready once the meta leader answers account info. */
export async function startNatsCluster(t: Teardown, size = 3): Promise<NatsServer[]> {
  const id = randomBytes(3).toString('hex');
  const ports = await distinctPorts(size * 2);
  const clusterPorts = ports.slice(size);
  const routes = clusterPorts.map((p) => `nats://127.0.0.1:${p}`);
  const servers: NatsServer[] = [];
  for (let i = 0; i < size; i++) {
    const storeDir = await fs.mkdtemp(path.join(os.tmpdir(), `pixelfox-nats-c${i}-`));
    servers.push(
      natsServer({
        name: `c${id}-n${i}`,
        port: ports[i] ?? 0,
        storeDir,
        cluster: { name: `pfx-${id}`, port: clusterPorts[i] ?? 0, routes },
      }),
    );
  }
  t.teardown(async () => {
    for (const s of servers) await s.kill9();
    for (const s of servers) await fs.rm(s.storeDir, { recursive: true, force: true });
  });
  await Promise.all(servers.map((s) => s.start()));
  await waitForJetStream(servers.map((s) => s.url).join(','), 60_000);
  return servers;
}

async function distinctPorts(n: number): Promise<number[]> {
  const out = new Set<number>();
  while (out.size < n) out.add(await freePort());
  return [...out];
}

/** JetStream answers (a cluster needs a few seconds to elect its meta leader). */
export async function waitForJetStream(urls: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < deadline) {
    try {
      const nc = await connect({ servers: urls.split(','), timeout: 2_000 });
      try {
        const jsm = await jetstreamManager(nc, { timeout: 2_000 });
        await jsm.getAccountInfo();
        return;
      } finally {
        await nc.close();
      }
    } catch (err) {
      last = err;
      await sleep(250);
    }
  }
  throw new Error(`JetStream at ${urls} not ready: ${String(last)}`);
}

// --- Postgres -----------------------------------------------------------------------------------------

export interface PgServer {
  port: number;
  /** base URL without a database name */
  url: string;
  dataDir: string;
  /** pg_ctl stop -m immediate (a crash: every connection dies at once) */
  crash(): Promise<void>;
  /** pg_ctl stop -m fast */
  stop(): Promise<void>;
  start(): Promise<void>;
}

function pgUid(): { uid: number; gid: number } {
  const r = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (r.status !== 0 || g.status !== 0) throw new Error('no postgres user on this machine');
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** Runs a Postgres binary as the postgres user (the cluster must not be owned by root). */
function asPostgres(bin: string, args: string[], timeoutMs = 60_000): string {
  const root = process.getuid?.() === 0;
  const cmd = root ? 'runuser' : path.join(PG_BIN, bin);
  const full = root ? ['-u', 'postgres', '--', path.join(PG_BIN, bin), ...args] : args;
  const r = spawnSync(cmd, full, { encoding: 'utf8', timeout: timeoutMs });
  if (r.status !== 0)
    throw new Error(`${bin} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A private Postgres 15 cluster (initdb + pg_ctl as user postgres) on a free port; removed at teardown. */
export async function startPrivatePostgres(t: Teardown): Promise<PgServer> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pixelfox-pg-'));
  const dataDir = path.join(root, 'data');
  const logFile = path.join(root, 'log');
  if (process.getuid?.() === 0) {
    const { uid, gid } = pgUid();
    chownSync(root, uid, gid);
  }
  const port = await freePort();
  asPostgres('initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8']);
  // fsync off: a test cluster that only ever sees process crashes (the OS keeps the page cache).
  const opts = `-p ${port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
  const pg: PgServer = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}`,
    dataDir,
    async start() {
      asPostgres('pg_ctl', ['-D', dataDir, '-o', opts, '-l', logFile, '-w', '-t', '60', 'start']);
      await waitPort(port, true, 30_000, 'postgres');
    },
    async stop() {
      asPostgres('pg_ctl', ['-D', dataDir, '-m', 'fast', '-w', 'stop']);
      await waitPort(port, false, 30_000, 'postgres');
    },
    async crash() {
      asPostgres('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
      await waitPort(port, false, 30_000, 'postgres');
    },
  };
  t.teardown(async () => {
    try {
      asPostgres('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
    } catch {
      // already stopped
    }
    await fs.rm(root, { recursive: true, force: true });
  });
  await pg.start();
  return pg;
}
