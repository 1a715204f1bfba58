// Storage pools: configuration rows plus the pure selection rule for new uploads.
import { transaction, type Sql } from './db.js';
import { configChangedHere, notifyConfigChanged } from './read-invalidation.js';

export type StorageType = 'local' | 'nfs' | 's3';
export type StorageTier = 'hot' | 'warm' | 'cold' | 'archive';
export const STORAGE_TYPES: readonly StorageType[] = ['local', 'nfs', 's3'];
export const STORAGE_TIERS: readonly StorageTier[] = ['hot', 'warm', 'cold', 'archive'];

export interface Pool {
  id: string;
  name: string;
  storage_type: StorageType;
  storage_tier: StorageTier;
  priority: number;
  base_path: string | null;
  public_base_url: string;
  upload_api_url: string | null;
  node_id: string;
  max_capacity_bytes: number | null;
  is_active: boolean;
  is_backup_target: boolean;
  s3_bucket: string | null;
  s3_region: string | null;
  s3_endpoint: string | null;
  s3_access_key: string | null;
  s3_secret_key: string | null;
  s3_force_path_style: boolean;
  s3_prefix: string;
  /** S3 pools only: objects are not publicly readable; nodes redirect to presigned GETs (migration 00003). */
  s3_private?: boolean;
  description: string;
  created_at: Date;
  updated_at: Date;
}

/** The pool as shown to operators: credentials never leave the database. */
export function publicPool(
  p: Pool,
): Omit<Pool, 's3_secret_key' | 's3_access_key'> & { s3_access_key: string | null } {
  const { s3_secret_key: _secret, s3_access_key, ...rest } = p;
  return { ...rest, s3_access_key: s3_access_key ? `${s3_access_key.slice(0, 4)}…` : null };
}

export async function listPools(sql: Sql): Promise<Pool[]> {
  return sql<Pool[]>`select * from storage_pools order by node_id, priority desc, name`;
}

export async function getPool(sql: Sql, id: string): Promise<Pool | null> {
  if (!/^[0-9a-f-]{36}$/i.test(id)) {
    const [byName] = await sql<Pool[]>`select * from storage_pools where name = ${id}`;
    return byName ?? null;
  }
  const [row] = await sql<Pool[]>`select * from storage_pools where id = ${id}`;
  return row ?? null;
}

export interface PoolInput {
  name: string;
  storage_type?: StorageType;
  storage_tier?: StorageTier;
  priority?: number;
  base_path?: string | null;
  public_base_url: string;
  upload_api_url?: string | null;
  node_id?: string;
  max_capacity_bytes?: number | null;
  is_active?: boolean;
  is_backup_target?: boolean;
  s3_bucket?: string | null;
  s3_region?: string | null;
  s3_endpoint?: string | null;
  s3_access_key?: string | null;
  s3_secret_key?: string | null;
  s3_force_path_style?: boolean;
  s3_prefix?: string;
  s3_private?: boolean;
  description?: string;
}

export const POOL_COLUMNS = [
  'name',
  'storage_type',
  'storage_tier',
  'priority',
  'base_path',
  'public_base_url',
  'upload_api_url',
  'node_id',
  'max_capacity_bytes',
  'is_active',
  'is_backup_target',
  's3_bucket',
  's3_region',
  's3_endpoint',
  's3_access_key',
  's3_secret_key',
  's3_force_path_style',
  's3_prefix',
  's3_private',
  'description',
] as const;

export async function addPool(sql: Sql, input: PoolInput): Promise<Pool> {
  const row: Record<string, unknown> = {};
  for (const c of POOL_COLUMNS) if (input[c] !== undefined) row[c] = input[c];
  row.public_base_url = input.public_base_url.replace(/\/+$/, '');
  row.storage_type ??= 'local';
  const [pool] = await sql<Pool[]>`insert into storage_pools ${sql(row)} returning *`;
  if (!pool) throw new Error('insert returned nothing');
  return pool;
}

export async function updatePool(sql: Sql, id: string, patch: Partial<PoolInput>): Promise<Pool | null> {
  const row: Record<string, unknown> = {};
  for (const c of POOL_COLUMNS) if (patch[c] !== undefined) row[c] = patch[c];
  if (Object.keys(row).length === 0) return getPool(sql, id);
  const pool = await transaction(sql, async (tx) => {
    const [updated] = await tx<
      Pool[]
    >`update storage_pools set ${sql(row)}, updated_at = now() where id = ${id} returning *`;
    // A pool's URLs are part of every image view of it: the API's image caches start over.
    if (updated) await notifyConfigChanged(tx, 'pools');
    return updated ?? null;
  });
  if (pool) configChangedHere('pools');
  return pool;
}

export interface PoolHealth {
  pool_id: string;
  node_id: string;
  healthy: boolean;
  reachable: boolean;
  free_bytes: number | null;
  used_bytes: number | null;
  checked_at: string;
}

export interface Candidate {
  pool: Pool;
  health: PoolHealth | null;
  /** bytes charged to the pool by the read model */
  usedBytes: number;
}

const TIER_RANK: Record<StorageTier, number> = { hot: 0, warm: 1, cold: 2, archive: 2 };

/** Free bytes the pool can still take: capacity minus usage, bounded by the disk's free space. */
export function freeBytes(c: Candidate): number {
  const byCapacity = c.pool.max_capacity_bytes === null ? Infinity : c.pool.max_capacity_bytes - c.usedBytes;
  const byDisk = c.health?.free_bytes ?? Infinity;
  return Math.min(byCapacity, byDisk);
}

/**
 * Pool selection for a new upload (pure): active pools whose node is healthy and reachable and has room
 * for the file; tier hot first, then warm, then any; higher priority first; ties broken by free space.
 */
export function selectPool(candidates: readonly Candidate[], fileSize: number): Pool | null {
  const eligible = candidates.filter(
    (c) => c.pool.is_active && c.health?.healthy === true && c.health.reachable && freeBytes(c) >= fileSize,
  );
  eligible.sort(
    (a, b) =>
      TIER_RANK[a.pool.storage_tier] - TIER_RANK[b.pool.storage_tier] ||
      b.pool.priority - a.pool.priority ||
      freeBytes(b) - freeBytes(a),
  );
  return eligible[0]?.pool ?? null;
}
