// How CLI commands and `npm start` get their configuration and connections.
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig, type Config } from '../../shared/config.js';
import { createSql, ensureDatabase, type Sql } from '../../shared/db.js';
import { createLogger, type Logger } from '../../shared/logger.js';
import { migrate } from '../../shared/migrate.js';
import { connectNats, type Nats } from '../../shared/nats.js';
import { randomSecret } from '../../shared/security/secrets.js';

const SECRET_NAMES = ['UPLOAD_TOKEN_SECRET', 'REPLICATION_SECRET', 'ADMIN_TOKEN'] as const;
type SecretName = (typeof SECRET_NAMES)[number];

export function secretsFile(dataDir: string): string {
  return path.join(dataDir, 'secrets.json');
}

export function readStoredSecrets(dataDir: string): Partial<Record<SecretName, string>> {
  try {
    return JSON.parse(fs.readFileSync(secretsFile(dataDir), 'utf8')) as Partial<Record<SecretName, string>>;
  } catch {
    return {};
  }
}

/** `npm start`: missing secrets are generated once and kept under DATA_DIR (mode 0600). */
export function ensureStoredSecrets(dataDir: string, env: NodeJS.ProcessEnv, say: (m: string) => void) {
  const stored = readStoredSecrets(dataDir);
  const missing = SECRET_NAMES.filter((n) => !env[n] && !stored[n]);
  if (missing.length === 0) return stored;
  for (const n of missing) stored[n] = randomSecret();
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(secretsFile(dataDir), JSON.stringify(stored, null, 2), { mode: 0o600 });
  say(`generated ${missing.join(', ')} and stored them in ${secretsFile(dataDir)}`);
  return stored;
}

export function cliConfig(requireSecrets = false): Config {
  const dataDir = path.resolve(process.env.DATA_DIR || './data');
  return loadConfig(process.env, { requireSecrets, storedSecrets: readStoredSecrets(dataDir) });
}

export function cliLogger(_config: Config): Logger {
  // CLI output is for people: only warnings and errors from the libraries reach stderr.
  return createLogger(process.env.LOG_LEVEL ?? 'warn', { service: 'cli' });
}

export async function withDb<T>(config: Config, log: Logger, f: (sql: Sql) => Promise<T>): Promise<T> {
  await ensureDatabase(config.databaseUrl, log);
  await migrate(config.databaseUrl, log);
  const sql = createSql(config.databaseUrl, { max: 4 });
  try {
    return await f(sql);
  } finally {
    await sql.end({ timeout: 2 });
  }
}

export async function withNats<T>(config: Config, log: Logger, f: (n: Nats) => Promise<T>): Promise<T> {
  const n = await connectNats(config.natsUrl, log, 'pixelfox-cli');
  try {
    return await f(n);
  } finally {
    await n.nc.drain().catch(() => undefined);
  }
}
