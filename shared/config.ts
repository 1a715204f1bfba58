// Configuration is parsed once from the environment, validated as a whole (one message listing every
// bad variable), frozen and passed explicitly. No behaviour branches on NODE_ENV.
import path from 'node:path';

export interface Config {
  readonly appHost: string;
  readonly appPort: number;
  readonly publicDomain: string;
  readonly nodeId: string;
  readonly natsUrl: string;
  readonly databaseUrl: string;
  readonly dataDir: string;
  readonly namespace: string;
  readonly uploadTokenSecret: string;
  readonly replicationSecret: string;
  readonly adminToken: string;
  readonly disableJobWorkers: boolean;
  /** JetStream replicas of the event stream (3 on a clustered NATS). */
  readonly natsReplicas: number;
  readonly logLevel: string;
  /** Upper bound on decoded pixels of any input; bigger images are refused at upload. */
  readonly maxImagePixels: number;
  /** Where partially received uploads live before their atomic rename (per pool when empty). */
  readonly shutdownTimeoutMs: number;
  /** Lifetime of a direct-to-S3 upload (presigned PUT and completion); uncompleted objects are removed after it. */
  readonly s3UploadTtlSeconds: number;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

type Env = Readonly<Record<string, string | undefined>>;

export interface LoadOptions {
  /** `npx pixelfox serve …` refuses to start without explicit secrets; `npm start` generates them. */
  requireSecrets: boolean;
  /** Secrets generated and stored under DATA_DIR by `npm start` (used when the env has none). */
  storedSecrets?: Partial<Record<'UPLOAD_TOKEN_SECRET' | 'REPLICATION_SECRET' | 'ADMIN_TOKEN', string>>;
}

export function loadConfig(env: Env, opts: LoadOptions): Config {
  const problems: string[] = [];
  const str = (name: string, fallback: string): string => {
    const v = env[name];
    return v === undefined || v === '' ? fallback : v;
  };
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(`${name} must be an integer in [${min}, ${max}], got "${raw}"`);
      return fallback;
    }
    return n;
  };
  const bool = (name: string): boolean =>
    ['1', 'true', 'yes', 'on'].includes((env[name] ?? '').toLowerCase());
  const secret = (name: 'UPLOAD_TOKEN_SECRET' | 'REPLICATION_SECRET' | 'ADMIN_TOKEN'): string => {
    const v = env[name] || opts.storedSecrets?.[name] || '';
    if (!v && opts.requireSecrets) problems.push(`${name} is required`);
    else if (v && v.length < 16) problems.push(`${name} must be at least 16 characters`);
    return v;
  };

  const appPort = int('APP_PORT', 3000, 0, 65535);
  const appHost = str('APP_HOST', '127.0.0.1');
  const publicDomain = str(
    'PUBLIC_DOMAIN',
    `http://${appHost === '0.0.0.0' ? '127.0.0.1' : appHost}:${appPort}`,
  );
  try {
    const u = new URL(publicDomain);
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      problems.push('PUBLIC_DOMAIN must be an http(s) URL');
  } catch {
    problems.push(`PUBLIC_DOMAIN must be a URL, got "${publicDomain}"`);
  }
  const nodeId = str('NODE_ID', 'local');
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(nodeId))
    problems.push('NODE_ID may only contain letters, digits, "_" and "-"');
  const namespace = str('PIXELFOX_NAMESPACE', 'pixelfox');
  if (!/^[A-Za-z0-9_-]{1,48}$/.test(namespace))
    problems.push('PIXELFOX_NAMESPACE may only contain letters, digits, "_" and "-" (max 48)');

  const config: Config = {
    appHost,
    appPort,
    publicDomain: publicDomain.replace(/\/+$/, ''),
    nodeId,
    natsUrl: str('NATS_URL', 'nats://127.0.0.1:4222'),
    databaseUrl: str('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/pixelfox'),
    dataDir: path.resolve(str('DATA_DIR', './data')),
    namespace,
    uploadTokenSecret: secret('UPLOAD_TOKEN_SECRET'),
    replicationSecret: secret('REPLICATION_SECRET'),
    adminToken: secret('ADMIN_TOKEN'),
    disableJobWorkers: bool('DISABLE_JOB_WORKERS'),
    natsReplicas: int('NATS_REPLICAS', 1, 1, 5),
    logLevel: str('LOG_LEVEL', 'info'),
    maxImagePixels: int('MAX_IMAGE_PIXELS', 100_000_000, 1, 2_000_000_000),
    shutdownTimeoutMs: int('SHUTDOWN_TIMEOUT_MS', 15_000, 100, 600_000),
    // 30 minutes like the node upload token; at most SigV4's presign limit of 7 days.
    s3UploadTtlSeconds: int('S3_UPLOAD_TTL_SECONDS', 30 * 60, 1, 604_800),
  };
  if (problems.length) throw new ConfigError(problems);
  return Object.freeze(config);
}
