// `npm start` on a bare machine: when NATS or Postgres is not reachable, start a private one under
// DATA_DIR (nats-server with JetStream; a Postgres cluster via initdb/pg_ctl) and say so.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export function reachable(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

async function waitFor(host: string, port: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await reachable(host, port, 500)) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

function which(cmd: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

export interface Started {
  what: string;
  child: ChildProcess | null;
  stop(): void;
}

export async function ensureNats(
  url: string,
  dataDir: string,
  say: (m: string) => void,
): Promise<Started | null> {
  const u = new URL(url.split(',')[0] ?? url);
  const host = u.hostname || '127.0.0.1';
  const port = Number(u.port || 4222);
  if (await reachable(host, port)) return null;
  const bin = which('nats-server');
  if (!bin)
    throw new Error(
      `NATS is not reachable at ${url} and nats-server is not on PATH (apt-get install nats-server)`,
    );
  const dir = path.join(dataDir, 'nats');
  fs.mkdirSync(dir, { recursive: true });
  const child = spawn(bin, ['-a', host, '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  if (!(await waitFor(host, port, 10_000))) throw new Error('the private nats-server did not come up');
  say(
    `NATS was not reachable: started a private nats-server with JetStream on ${host}:${port}, data in ${dir}`,
  );
  return { what: 'nats-server', child, stop: () => child.kill('SIGTERM') };
}

function findPgBin(name: string): string | null {
  const direct = which(name);
  if (direct) return direct;
  const root = '/usr/lib/postgresql';
  if (!fs.existsSync(root)) return null;
  for (const v of fs.readdirSync(root).sort().reverse()) {
    const p = path.join(root, v, 'bin', name);
    if (fs.existsSync(p)) return p;
  }
  return null;
}

export async function ensurePostgres(
  url: string,
  dataDir: string,
  say: (m: string) => void,
): Promise<Started | null> {
  const u = new URL(url);
  const host = u.hostname || '127.0.0.1';
  const port = Number(u.port || 5432);
  if (await reachable(host, port)) return null;
  const initdb = findPgBin('initdb');
  const pgCtl = findPgBin('pg_ctl');
  if (!initdb || !pgCtl)
    throw new Error(`Postgres is not reachable at ${host}:${port} and initdb/pg_ctl were not found`);
  const dir = path.join(dataDir, 'pg');
  // Postgres refuses to run as root: run it as the `postgres` user then.
  const asRoot = process.getuid?.() === 0;
  const run = (cmd: string, args: string[]) =>
    asRoot
      ? spawnSync('runuser', ['-u', 'postgres', '--', cmd, ...args], { encoding: 'utf8' })
      : spawnSync(cmd, args, { encoding: 'utf8' });
  fs.mkdirSync(dir, { recursive: true });
  if (asRoot) spawnSync('chown', ['-R', 'postgres', dir]);
  if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) {
    const r = run(initdb, ['-D', dir, '-U', u.username || 'postgres', '--auth=trust']);
    if (r.status !== 0) throw new Error(`initdb failed: ${r.stderr}`);
  }
  const r = run(pgCtl, [
    '-D',
    dir,
    '-l',
    path.join(dir, 'server.log'),
    '-o',
    `-p ${port} -k /tmp -h ${host}`,
    'start',
  ]);
  if (r.status !== 0) throw new Error(`pg_ctl start failed: ${r.stderr}`);
  if (!(await waitFor(host, port, 15_000))) throw new Error('the private Postgres did not come up');
  say(`Postgres was not reachable: started a private cluster on ${host}:${port}, data in ${dir}`);
  return { what: 'postgres', child: null, stop: () => void run(pgCtl, ['-D', dir, 'stop', '-m', 'fast']) };
}
