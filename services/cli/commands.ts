// The CLI's commands. Each is a thin shell over shared/ and services/ops (the admin API calls the same).
import path from 'node:path';
import { loadConfig } from '../../shared/config.js';
import { createLogger } from '../../shared/logger.js';
import {
  addPool,
  getPool,
  listPools,
  publicPool,
  updatePool,
  STORAGE_TIERS,
  STORAGE_TYPES,
  type PoolInput,
  type StorageTier,
  type StorageType,
} from '../../shared/pools.js';
import { publisher } from '../../shared/publish.js';
import { isSettingKey, SettingsStore } from '../../shared/settings.js';
import {
  createApiKey,
  createUser,
  getUser,
  listApiKeys,
  listUsers,
  revokeApiKey,
  rotateApiKey,
  updateUser,
} from '../../shared/users.js';
import { applyConsumers, applyStream } from '../../streams/apply.js';
import { isEventType } from '../../streams/events/catalog.js';
import { names } from '../../streams/subjects.js';
import { imageHistory, readEvents, typeFilterOf } from '../ops/events.js';
import { requestReprocess } from '../ops/images.js';
import { ALL_ROLES, startStack, type Role } from '../stack.js';
import { cliConfig, cliLogger, ensureStoredSecrets, withDb, withNats } from './env.js';
import { ensureNats, ensurePostgres, type Started } from './local-services.js';
import { printJson, printTable, progress } from './output.js';
import { rebuild, verify } from '../../projections/rebuild.js';
import { requeueFailedBackups } from '../backup/worker.js';
import { startMove } from '../mover/enqueue.js';
import { listFailedJobs, retryFailedJobs } from '../ops/failed-jobs.js';

type Values = Record<string, string | boolean | undefined>;
type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: false }>;

export interface Command {
  name: string;
  usage: string;
  summary: string;
  options?: OptionSpec;
  run(values: Values, positionals: string[]): Promise<number | void>;
}

const json = { json: { type: 'boolean' as const } };
const str = (v: Values, k: string): string | undefined =>
  typeof v[k] === 'string' ? (v[k] as string) : undefined;
const need = (v: Values, k: string): string => {
  const s = str(v, k);
  if (!s) throw new Error(`--${k} is required`);
  return s;
};
const onOff = (s: string | undefined): boolean | undefined =>
  s === undefined ? undefined : ['on', 'true', '1', 'yes'].includes(s.toLowerCase());

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
}

async function runServer(roles: readonly Role[], requireSecrets: boolean): Promise<number> {
  const dataDir = path.resolve(process.env.DATA_DIR || './data');
  const say = (m: string) => console.error(`[pixelfox] ${m}`);
  const started: Started[] = [];
  const stored = requireSecrets ? {} : ensureStoredSecrets(dataDir, process.env, say);
  const config = loadConfig(process.env, { requireSecrets, storedSecrets: stored });
  const log = createLogger(config.logLevel, { service: roles.join('+'), nodeId: config.nodeId });
  if (!requireSecrets) {
    const nats = await ensureNats(config.natsUrl, config.dataDir, say);
    if (nats) started.push(nats);
    const pg = await ensurePostgres(config.databaseUrl, config.dataDir, say);
    if (pg) started.push(pg);
  }
  const stack = await startStack(config, roles, log);
  say(
    `serving ${stack.url} (roles: ${roles.join(', ')}; node ${config.nodeId}; namespace ${config.namespace})`,
  );
  const sig = await waitForSignal();
  log.info({ signal: sig }, 'shutting down');
  const timer = setTimeout(() => {
    log.error('shutdown took too long; exiting');
    process.exit(1);
  }, config.shutdownTimeoutMs + 10_000);
  timer.unref();
  await stack.close();
  for (const s of started.reverse()) s.stop();
  return 0;
}

function poolInput(v: Values): Partial<PoolInput> {
  const p: Partial<PoolInput> = {};
  const type = str(v, 'type');
  if (type !== undefined) {
    if (!STORAGE_TYPES.includes(type as StorageType))
      throw new Error(`--type must be one of ${STORAGE_TYPES.join(', ')}`);
    p.storage_type = type as StorageType;
  }
  const tier = str(v, 'tier');
  if (tier !== undefined) {
    if (!STORAGE_TIERS.includes(tier as StorageTier))
      throw new Error(`--tier must be one of ${STORAGE_TIERS.join(', ')}`);
    p.storage_tier = tier as StorageTier;
  }
  const num = (k: string) => {
    const s = str(v, k);
    if (s === undefined) return undefined;
    const n = Number(s);
    if (!Number.isFinite(n)) throw new Error(`--${k} must be a number`);
    return n;
  };
  const set = <K extends keyof PoolInput>(k: K, val: PoolInput[K] | undefined) => {
    if (val !== undefined) p[k] = val;
  };
  set('name', str(v, 'name'));
  set('priority', num('priority'));
  set('base_path', str(v, 'base-path') ? path.resolve(need(v, 'base-path')) : undefined);
  set('public_base_url', str(v, 'public-base-url'));
  set('upload_api_url', str(v, 'upload-api-url'));
  set('node_id', str(v, 'node'));
  set('max_capacity_bytes', num('capacity'));
  set('is_active', onOff(str(v, 'active')));
  set('is_backup_target', onOff(str(v, 'backup-target')));
  set('s3_bucket', str(v, 's3-bucket'));
  set('s3_region', str(v, 's3-region'));
  set('s3_endpoint', str(v, 's3-endpoint'));
  set('s3_access_key', str(v, 's3-access-key'));
  set('s3_secret_key', str(v, 's3-secret-key'));
  set('s3_force_path_style', onOff(str(v, 's3-path-style')));
  set('s3_prefix', str(v, 's3-prefix'));
  set('s3_private', onOff(str(v, 's3-private')));
  set('description', str(v, 'description'));
  return p;
}

const poolOptions: OptionSpec = {
  name: { type: 'string' },
  type: { type: 'string' },
  tier: { type: 'string' },
  priority: { type: 'string' },
  'base-path': { type: 'string' },
  'public-base-url': { type: 'string' },
  'upload-api-url': { type: 'string' },
  node: { type: 'string' },
  capacity: { type: 'string' },
  active: { type: 'string' },
  'backup-target': { type: 'string' },
  's3-bucket': { type: 'string' },
  's3-region': { type: 'string' },
  's3-endpoint': { type: 'string' },
  's3-access-key': { type: 'string' },
  's3-secret-key': { type: 'string' },
  's3-path-style': { type: 'string' },
  's3-prefix': { type: 'string' },
  's3-private': { type: 'string' },
  description: { type: 'string' },
  ...json,
};

export const COMMANDS: Command[] = [
  {
    name: 'start',
    usage: 'start',
    summary:
      'Run the whole stack for one node (API, storage node, workers, projector) on APP_PORT (npm start)',
    run: () => runServer(ALL_ROLES, false),
  },
  {
    name: 'serve',
    usage: 'serve <api|storage|worker|projector>...',
    summary: 'Run some roles of a node (multi-node deployments; secrets must be set in the environment)',
    run: async (_v, roles) => {
      const bad = roles.filter((r) => !ALL_ROLES.includes(r as Role));
      if (roles.length === 0 || bad.length)
        throw new Error(`roles: ${ALL_ROLES.join(', ')}${bad.length ? ` (unknown: ${bad.join(', ')})` : ''}`);
      return runServer(roles as Role[], true);
    },
  },
  {
    name: 'streams apply',
    usage: 'streams apply',
    summary: 'Create or update the JetStream stream and every durable consumer (never deletes)',
    run: async () => {
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      const nodes = await withDb(config, log, async (sql) => (await listPools(sql)).map((p) => p.node_id));
      await withNats(config, log, async ({ jsm }) => {
        const s = await applyStream(jsm, n, config.natsReplicas);
        const consumers = await applyConsumers(jsm, n, [config.nodeId, ...nodes]);
        console.log(`stream ${n.stream}: ${s}`);
        for (const c of consumers) console.log(`consumer ${c}: applied`);
      });
    },
  },
  {
    name: 'db migrate',
    usage: 'db migrate',
    summary: 'Apply database migrations and create the read-model schema',
    run: async () => {
      const config = cliConfig();
      await withDb(config, cliLogger(config), async () => undefined);
      console.log('database is up to date');
    },
  },
  {
    name: 'users create',
    usage: 'users create --email E --plan free|premium|premium_max [--json]',
    summary: 'Create a user and its first API key (shown once)',
    options: { email: { type: 'string' }, plan: { type: 'string' }, ...json },
    run: async (v) => {
      const config = cliConfig();
      const r = await withDb(config, cliLogger(config), (sql) =>
        createUser(sql, need(v, 'email'), str(v, 'plan') ?? 'free'),
      );
      if (v.json)
        printJson({ user_id: r.user.id, api_key: r.apiKey, email: r.user.email, plan: r.user.plan });
      else
        console.log(
          `user ${r.user.id} (${r.user.email}, ${r.user.plan})\napi key: ${r.apiKey}  (shown once)`,
        );
    },
  },
  {
    name: 'users list',
    usage: 'users list [--json]',
    summary: 'List users',
    options: json,
    run: async (v) => {
      const config = cliConfig();
      const users = await withDb(config, cliLogger(config), (sql) => listUsers(sql));
      if (v.json) printJson(users);
      else
        printTable(users as unknown as Record<string, unknown>[], [
          'id',
          'email',
          'plan',
          'prefs',
          'created_at',
          'disabled_at',
        ]);
    },
  },
  {
    name: 'users prefs',
    usage: 'users prefs <user> [--webp on|off] [--avif on|off] [--json]',
    summary: "Set a user's format preferences (a format is made only when plan, toggles and prefs allow it)",
    options: { webp: { type: 'string' }, avif: { type: 'string' }, ...json },
    run: async (v, [id]) => {
      if (!id) throw new Error('user id or email required');
      const config = cliConfig();
      const user = await withDb(config, cliLogger(config), async (sql) => {
        const u = await getUser(sql, id);
        if (!u) throw new Error(`no user ${id}`);
        const prefs: { webp?: boolean; avif?: boolean } = {};
        const webp = onOff(str(v, 'webp'));
        const avif = onOff(str(v, 'avif'));
        if (webp !== undefined) prefs.webp = webp;
        if (avif !== undefined) prefs.avif = avif;
        return updateUser(sql, u.id, { prefs });
      });
      if (v.json) printJson(user);
      else console.log(`prefs of ${user?.email}: ${JSON.stringify(user?.prefs)}`);
    },
  },
  {
    name: 'users plan',
    usage: 'users plan <user> <free|premium|premium_max>',
    summary: "Change a user's plan",
    run: async (_v, [id, plan]) => {
      if (!id || !plan) throw new Error('usage: users plan <user> <plan>');
      const config = cliConfig();
      await withDb(config, cliLogger(config), async (sql) => {
        const u = await getUser(sql, id);
        if (!u) throw new Error(`no user ${id}`);
        await updateUser(sql, u.id, { plan });
      });
      console.log(`plan set to ${plan}`);
    },
  },
  {
    name: 'users keys',
    usage: 'users keys <user> [--create NAME | --revoke KEY_ID | --rotate KEY_ID] [--json]',
    summary: "List, create, revoke or rotate a user's API keys",
    options: { create: { type: 'string' }, revoke: { type: 'string' }, rotate: { type: 'string' }, ...json },
    run: async (v, [id]) => {
      if (!id) throw new Error('user id or email required');
      const config = cliConfig();
      const out = await withDb(config, cliLogger(config), async (sql) => {
        const u = await getUser(sql, id);
        if (!u) throw new Error(`no user ${id}`);
        if (str(v, 'create')) return { created: await createApiKey(sql, u.id, need(v, 'create')) };
        if (str(v, 'revoke')) return { revoked: await revokeApiKey(sql, need(v, 'revoke')) };
        if (str(v, 'rotate')) return { rotated: await rotateApiKey(sql, need(v, 'rotate')) };
        return { keys: await listApiKeys(sql, u.id) };
      });
      if (v.json || !('keys' in out)) printJson(out);
      else
        printTable(out.keys as unknown as Record<string, unknown>[], [
          'id',
          'name',
          'prefix',
          'created_at',
          'revoked_at',
          'last_used_at',
        ]);
    },
  },
  {
    name: 'pools list',
    usage: 'pools list [--json]',
    summary: 'List storage pools with usage',
    options: json,
    run: async (v) => {
      const config = cliConfig();
      const rows = await withDb(config, cliLogger(config), async (sql) => {
        const pools = await listPools(sql);
        const usage = await sql<
          { pool_id: string; used_bytes: number; file_count: number }[]
        >`select * from pool_usage`;
        const u = new Map(usage.map((x) => [x.pool_id, x]));
        return pools.map((p) => ({
          ...publicPool(p),
          used_bytes: u.get(p.id)?.used_bytes ?? 0,
          file_count: u.get(p.id)?.file_count ?? 0,
        }));
      });
      if (v.json) printJson(rows);
      else
        printTable(rows, [
          'id',
          'name',
          'storage_type',
          'storage_tier',
          'priority',
          'node_id',
          'is_active',
          'used_bytes',
          'file_count',
          'base_path',
          'public_base_url',
        ]);
    },
  },
  {
    name: 'pools add',
    usage:
      'pools add --name N --type local|nfs|s3 [--tier hot] [--priority 100] [--base-path P] [--public-base-url U] [--upload-api-url U] [--node ID] [--capacity BYTES] [--s3-… ] [--json]',
    summary: 'Add a storage pool',
    options: poolOptions,
    run: async (v) => {
      const config = cliConfig();
      const input = poolInput(v);
      if (!input.name) throw new Error('--name is required');
      const base = input.public_base_url ?? config.publicDomain;
      const pool = await withDb(config, cliLogger(config), (sql) =>
        addPool(sql, {
          ...input,
          name: input.name ?? '',
          public_base_url: base,
          upload_api_url:
            input.upload_api_url ??
            (input.storage_type === 's3' ? null : `${base.replace(/\/+$/, '')}/api/internal/upload`),
          node_id: input.node_id ?? config.nodeId,
        }),
      );
      if (v.json) printJson(publicPool(pool));
      else console.log(`pool ${pool.id} (${pool.name}) added`);
    },
  },
  {
    name: 'pools update',
    usage: 'pools update <pool> [same options as add] [--json]',
    summary: 'Change a storage pool',
    options: poolOptions,
    run: async (v, [id]) => {
      if (!id) throw new Error('pool id or name required');
      const config = cliConfig();
      const pool = await withDb(config, cliLogger(config), async (sql) => {
        const p = await getPool(sql, id);
        if (!p) throw new Error(`no pool ${id}`);
        return updatePool(sql, p.id, poolInput(v));
      });
      if (!pool) throw new Error(`no pool ${id}`);
      if (v.json) printJson(publicPool(pool));
      else console.log(`pool ${pool.id} (${pool.name}) updated`);
    },
  },
  {
    name: 'settings get',
    usage: 'settings get [KEY] [--json]',
    summary: 'Show admin settings (defaults where unset)',
    options: json,
    run: async (v, [key]) => {
      const config = cliConfig();
      const all = await withDb(config, cliLogger(config), (sql) => new SettingsStore(sql).all());
      if (key) {
        if (!isSettingKey(key)) throw new Error(`unknown setting ${key}`);
        if (v.json) printJson({ [key]: all[key] });
        else console.log(String(all[key]));
        return;
      }
      if (v.json) printJson(all);
      else
        printTable(
          Object.entries(all).map(([k, val]) => ({ key: k, value: val })),
          ['key', 'value'],
        );
    },
  },
  {
    name: 'settings set',
    usage: 'settings set KEY VALUE',
    summary: 'Change an admin setting (takes effect on every node within seconds)',
    run: async (_v, [key, value]) => {
      if (!key || value === undefined) throw new Error('usage: settings set KEY VALUE');
      if (!isSettingKey(key)) throw new Error(`unknown setting ${key}`);
      const config = cliConfig();
      const stored = await withDb(config, cliLogger(config), (sql) => new SettingsStore(sql).set(key, value));
      console.log(`${key} = ${JSON.stringify(stored)}`);
    },
  },
  {
    name: 'images history',
    usage: 'images history <uuid> [--json]',
    summary: "One image's events in stream order",
    options: json,
    run: async (v, [id]) => {
      if (!id) throw new Error('image uuid required');
      const config = cliConfig();
      const n = names(config.namespace);
      const events = await withNats(config, cliLogger(config), ({ js }) => imageHistory(js, n, id));
      if (v.json) printJson(events.map((e) => ({ seq: e.seq, ...e.event })));
      else
        for (const e of events)
          console.log(
            `${String(e.seq).padStart(8)}  ${e.event.occurred_at}  ${e.event.type.padEnd(24)} node=${e.event.node_id} ${summarise(e.event.data)}`,
          );
      return events.length === 0 ? 1 : 0;
    },
  },
  {
    name: 'images reprocess',
    usage: 'images reprocess <uuid> | --failed [--json]',
    summary: 'Run the variant pipeline again for one image or every failed one',
    options: { failed: { type: 'boolean' }, ...json },
    run: async (v, [id]) => {
      if (!id && !v.failed) throw new Error('give an image uuid or --failed');
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      const ids = await withDb(config, log, (sql) =>
        withNats(config, log, async ({ nc }) => {
          const bar = progress('reprocess', 0);
          const out = await requestReprocess(
            sql,
            publisher(nc, n),
            v.failed ? { failed: true } : { imageId: id ?? '' },
            'cli',
            (done, total) => bar.update(done, total),
          );
          bar.finish();
          return out;
        }),
      );
      if (v.json) printJson({ requested: ids.length, image_ids: ids });
      else console.log(`reprocessing requested for ${ids.length} image(s)`);
      return ids.length === 0 && id ? 1 : 0;
    },
  },
  {
    name: 'events tail',
    usage: 'events tail [--type T] [--image UUID] [--from-seq N | --since TIME] [--follow] [--json-lines]',
    summary: 'Print events as JSON lines',
    options: {
      // accepted for scripts that ask for the format explicitly: the output is always JSON lines
      'json-lines': { type: 'boolean' },
      type: { type: 'string' },
      image: { type: 'string' },
      'from-seq': { type: 'string' },
      since: { type: 'string' },
      follow: { type: 'boolean', short: 'f' },
    },
    run: async (v) => {
      const config = cliConfig();
      const n = names(config.namespace);
      const type = str(v, 'type');
      if (type && !isEventType(type)) throw new Error(`unknown event type ${type}`);
      const since = str(v, 'since');
      if (since && Number.isNaN(Date.parse(since))) throw new Error('--since must be a date/time');
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      await withNats(config, cliLogger(config), async ({ js }) => {
        for await (const e of readEvents(js, n, {
          filter: typeFilterOf(n, type && isEventType(type) ? type : undefined, str(v, 'image')),
          ...(str(v, 'from-seq') ? { fromSeq: Number(str(v, 'from-seq')) } : {}),
          ...(since ? { since: new Date(since) } : {}),
          follow: v.follow === true,
          signal: ac.signal,
        })) {
          process.stdout.write(
            `${JSON.stringify({ seq: e.seq, ...(e.event ?? { undecodable: Buffer.from(e.raw).toString('base64') }) })}\n`,
          );
        }
      });
    },
  },
  {
    name: 'pools move',
    usage: 'pools move --from <pool> --to <pool> [--limit N] [--json]',
    summary: 'Move the images of a pool to another (verify-then-switch; node to node via replication)',
    options: { from: { type: 'string' }, to: { type: 'string' }, limit: { type: 'string' }, ...json },
    run: async (v) => {
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      const limit = str(v, 'limit');
      const r = await withDb(config, log, (sql) =>
        withNats(config, log, async ({ nc }) => {
          const bar = progress('enqueue', 0);
          const out = await startMove(
            { sql, pub: publisher(nc, n) },
            {
              fromPoolId: need(v, 'from'),
              toPoolId: need(v, 'to'),
              ...(limit ? { limit: Number(limit) } : {}),
              correlationId: `cli-${process.pid}`,
              onProgress: (done, total) => bar.update(done, total),
            },
          );
          bar.finish();
          return out;
        }),
      );
      if (v.json) printJson(r);
      else
        console.log(
          `move ${r.move_id}: ${r.count} image(s) queued from ${r.from_pool_id} to ${r.to_pool_id}`,
        );
    },
  },
  {
    name: 'projections rebuild',
    usage: 'projections rebuild [--projection NAME[,NAME]]',
    summary:
      'Replay the stream into fresh read models beside the live ones, then switch them in atomically (resumable)',
    options: { projection: { type: 'string' } },
    run: async (v) => {
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      const tables = str(v, 'projection')
        ?.split(',')
        .map((x) => x.trim())
        .filter(Boolean);
      const seq = await withDb(config, log, (sql) =>
        withNats(config, log, async ({ js, jsm }) => {
          const bar = progress('rebuild', 0);
          const r = await rebuild(
            { sql, js, jsm, names: n, log, onProgress: (done, total) => bar.update(done, total) },
            tables ? { tables } : {},
          );
          bar.finish();
          return r;
        }),
      );
      console.log(`read models rebuilt from the stream and switched in at sequence ${seq}`);
    },
  },
  {
    name: 'projections verify',
    usage: 'projections verify [--json]',
    summary:
      'Rebuild into a scratch schema and compare row by row with the live read models (exit 0 only when identical)',
    options: json,
    run: async (v) => {
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      const r = await withDb(config, log, (sql) =>
        withNats(config, log, async ({ js, jsm }) => {
          const bar = progress('verify', 0);
          const out = await verify({
            sql,
            js,
            jsm,
            names: n,
            log,
            onProgress: (done, total) => bar.update(done, total),
          });
          bar.finish();
          return out;
        }),
      );
      if (v.json) printJson(r);
      else if (r.differences.length === 0) console.log(`identical (at sequence ${r.seq})`);
      else {
        console.log(`${r.differences.length} difference(s) at sequence ${r.seq}:`);
        for (const d of r.differences) console.log(`  ${d.table} ${d.side}: ${JSON.stringify(d.row)}`);
      }
      return r.differences.length === 0 ? 0 : 1;
    },
  },
  {
    name: 'backups retry',
    usage: 'backups retry --failed | --image UUID',
    summary: 'Start a new round of attempts for failed backups',
    options: { failed: { type: 'boolean' }, image: { type: 'string' } },
    run: async (v) => {
      if (!v.failed && !str(v, 'image')) throw new Error('give --failed or --image UUID');
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      const count = await withDb(config, log, (sql) =>
        withNats(config, log, ({ nc }) =>
          requeueFailedBackups(
            { sql, pub: publisher(nc, n) },
            str(v, 'image') ? { imageId: need(v, 'image') } : {},
          ),
        ),
      );
      console.log(`re-queued ${count} failed backup(s)`);
    },
  },
  {
    name: 'jobs failed',
    usage: 'jobs failed [--all] [--retry CONSUMER:SEQ | --retry-all] [--json]',
    summary: 'List failed jobs (max deliveries reached or terminated); retry one or all',
    options: {
      all: { type: 'boolean' },
      retry: { type: 'string' },
      'retry-all': { type: 'boolean' },
      ...json,
    },
    run: async (v) => {
      const config = cliConfig();
      const log = cliLogger(config);
      const n = names(config.namespace);
      return withDb(config, log, (sql) =>
        withNats(config, log, async (nats) => {
          const retryOne = str(v, 'retry');
          if (retryOne || v['retry-all']) {
            let which: { all: true } | { consumer: string; streamSeq: number } = { all: true };
            if (retryOne) {
              const i = retryOne.lastIndexOf(':');
              which = { consumer: retryOne.slice(0, i), streamSeq: Number(retryOne.slice(i + 1)) };
            }
            const count = await retryFailedJobs({ sql, nats, names: n, pub: publisher(nats.nc, n) }, which);
            console.log(`retried ${count} job(s)`);
            return count > 0 || !retryOne ? 0 : 1;
          }
          const jobs = await listFailedJobs(sql, { includeRetried: v.all === true });
          if (v.json) printJson(jobs);
          else
            printTable(jobs as unknown as Record<string, unknown>[], [
              'consumer',
              'stream_seq',
              'kind',
              'event_type',
              'image_id',
              'deliveries',
              'reason',
              'failed_at',
              'retried_at',
            ]);
          return 0;
        }),
      );
    },
  },
];

function summarise(data: unknown): string {
  const s = JSON.stringify(data);
  return s.length > 160 ? `${s.slice(0, 157)}...` : s;
}
