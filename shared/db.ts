// Postgres: one client per process. Read models live in the schema `rm` (swapped whole by a rebuild),
// configuration tables in `public`; the search path makes both visible unqualified.
import postgres from 'postgres';
import type { Logger } from './logger.js';

export type Sql = postgres.Sql;
export type Tx = postgres.TransactionSql;

export const READ_MODEL_SCHEMA = 'rm';

export function createSql(url: string, opts: { max?: number; searchPath?: string } = {}): Sql {
  return postgres(url, {
    max: opts.max ?? 10,
    idle_timeout: 30,
    connect_timeout: 5,
    // Seconds before reconnecting: doubles from 0.1 up to 2, so a restarted Postgres is in use again
    // within ~2 s (postgres.js's default grows to 20 s after a few refused attempts).
    backoff: (retries: number) => Math.min(0.1 * 2 ** retries, 2),
    onnotice: () => {},
    connection: {
      search_path: opts.searchPath ?? `${READ_MODEL_SCHEMA},public`,
      application_name: 'pixelfox',
    },
    // int8 as a JS number: byte counts stay far below 2^53 (8 PiB), and JSON-serialise as numbers.
    types: {
      bigint: { to: 20, from: [20], serialize: (x: number) => String(x), parse: (x: string) => Number(x) },
    },
    transform: { undefined: null },
  });
}

/** Errors after which the connection is gone (and with it the transaction: Postgres rolled it back). */
export function isConnectionLost(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (
    typeof code === 'string' &&
    /^(CONNECTION_(CLOSED|DESTROYED|ENDED)|ECONNRESET|EPIPE|57P0[123])$/.test(code)
  );
}

/**
 * `sql.begin`, except that a transaction whose connection was lost is not followed by a ROLLBACK on
 * that dead connection: postgres.js 3.4.9 writes it to a null socket from a setImmediate, an uncatchable
 * TypeError that kills the process (porsager/postgres#1154, #1208; no fixed release yet). begin() itself
 * rejects with CONNECTION_CLOSED when the connection closes, so the callers still see the failure.
 */
export function transaction<T>(sql: Sql, fn: (tx: Tx) => Promise<T>): Promise<T> {
  return sql.begin((tx) =>
    fn(tx).catch((err: unknown) => {
      if (isConnectionLost(err)) return new Promise<T>(() => undefined);
      throw err;
    }),
  ) as Promise<T>;
}

/** Creates the database named in the URL when it does not exist (connecting through `postgres`). */
export async function ensureDatabase(url: string, log: Logger): Promise<void> {
  const u = new URL(url);
  const dbName = decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres';
  u.pathname = '/postgres';
  const admin = postgres(u.toString(), { max: 1, connect_timeout: 5, onnotice: () => {} });
  try {
    const [row] = await admin`select 1 as one from pg_database where datname = ${dbName}`;
    if (!row) {
      try {
        await admin.unsafe(`create database "${dbName.replace(/"/g, '""')}"`);
        log.info({ database: dbName }, 'created database');
      } catch (err) {
        // Another process may have created it at the same moment.
        if (!/already exists/.test(String(err))) throw err;
      }
    }
  } finally {
    await admin.end({ timeout: 1 });
  }
}

/** Drops a database (tests clean up after themselves). */
export async function dropDatabase(url: string): Promise<void> {
  const u = new URL(url);
  const dbName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  u.pathname = '/postgres';
  const admin = postgres(u.toString(), { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`drop database if exists "${dbName.replace(/"/g, '""')}" with (force)`);
  } finally {
    await admin.end({ timeout: 1 });
  }
}
