// Schema migrations (postgres-shift) for configuration tables, then the live read-model schema.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import shift from 'postgres-shift';
import { ensureReadModels } from '../projections/schema.js';
import { READ_MODEL_SCHEMA } from './db.js';
import type { Logger } from './logger.js';

const MIGRATIONS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'projections', 'migrations');
// Serialises migrations of concurrently starting processes (several nodes, tests).
const MIGRATION_LOCK = 727_001;

export async function migrate(url: string, log: Logger): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK})`;
    await shift({
      sql,
      path: MIGRATIONS,
      before: ({ migration_id, name }) => log.info({ migration_id, name }, 'applying migration'),
    });
    await ensureReadModels(sql, READ_MODEL_SCHEMA);
    await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`;
  } finally {
    await sql.end({ timeout: 2 });
  }
}
