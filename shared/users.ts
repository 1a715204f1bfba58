// Users and API keys. Keys are shown once at creation and stored only as a SHA-256 hash: a leaked
// database does not leak usable keys. (A fast hash is right here: keys are 256-bit random, not passwords.)
import { hash, randomBytes } from 'node:crypto';
import { transaction, type Sql } from './db.js';
import { isPlanName, type PlanName } from './plans.js';
import { configChangedHere, notifyConfigChanged } from './read-invalidation.js';

export interface User {
  id: string;
  email: string;
  plan: PlanName;
  prefs: UserPrefs;
  created_at: Date;
  disabled_at: Date | null;
}

export interface UserPrefs {
  webp?: boolean;
  avif?: boolean;
}

export interface ApiKeyRow {
  id: string;
  user_id: string;
  name: string;
  prefix: string;
  created_at: Date;
  revoked_at: Date | null;
  last_used_at: Date | null;
}

export function hashApiKey(key: string): string {
  // One-shot (Node ≥ 20.12): a third of createHash().update().digest()'s cost, on every API request.
  return hash('sha256', key, 'hex');
}

function newApiKey(): { key: string; prefix: string } {
  const prefix = randomBytes(4).toString('hex');
  return { key: `pfx_${prefix}_${randomBytes(24).toString('base64url')}`, prefix };
}

export async function createUser(
  sql: Sql,
  email: string,
  plan: string,
): Promise<{ user: User; apiKey: string; keyId: string }> {
  if (!isPlanName(plan)) throw new Error(`unknown plan "${plan}" (free, premium, premium_max)`);
  if (!/^[^\s@]+@[^\s@]+$/.test(email) || email.length > 320) throw new Error(`invalid email "${email}"`);
  return sql.begin(async (tx) => {
    const [user] = await tx<
      User[]
    >`insert into users (email, plan) values (${email.toLowerCase()}, ${plan}) returning *`;
    if (!user) throw new Error('user insert returned nothing');
    const { key, id } = await insertKey(tx as unknown as Sql, user.id, 'default');
    return { user, apiKey: key, keyId: id };
  });
}

async function insertKey(sql: Sql, userId: string, name: string): Promise<{ key: string; id: string }> {
  const { key, prefix } = newApiKey();
  const [row] = await sql<{ id: string }[]>`
    insert into api_keys (user_id, name, prefix, key_hash) values (${userId}, ${name}, ${prefix}, ${hashApiKey(key)})
    returning id`;
  if (!row) throw new Error('key insert returned nothing');
  return { key, id: row.id };
}

export async function createApiKey(
  sql: Sql,
  userId: string,
  name = 'default',
): Promise<{ key: string; id: string }> {
  return insertKey(sql, userId, name);
}

// Revocation, rotation and user changes tell the API's auth caches in their transaction
// (shared/read-invalidation.ts): a revoked key is refused by this process from the commit on, and by
// every other API process from when the NOTIFY reaches it (delivered right after the commit).

export async function revokeApiKey(sql: Sql, keyId: string): Promise<boolean> {
  const revoked = await transaction(sql, async (tx) => {
    const r = await tx`update api_keys set revoked_at = now() where id = ${keyId} and revoked_at is null`;
    if (r.count === 1) await notifyConfigChanged(tx, 'auth');
    return r.count === 1;
  });
  if (revoked) configChangedHere('auth');
  return revoked;
}

/** Rotation: a new key, and the old one revoked in the same transaction. */
export async function rotateApiKey(sql: Sql, keyId: string): Promise<{ key: string; id: string } | null> {
  const rotated = await sql.begin(async (tx) => {
    const [old] = await tx<
      ApiKeyRow[]
    >`update api_keys set revoked_at = now() where id = ${keyId} and revoked_at is null returning *`;
    if (!old) return null;
    await notifyConfigChanged(tx, 'auth');
    return insertKey(tx as unknown as Sql, old.user_id, old.name);
  });
  if (rotated) configChangedHere('auth');
  return rotated;
}

export async function listApiKeys(sql: Sql, userId: string): Promise<ApiKeyRow[]> {
  return sql<ApiKeyRow[]>`select id, user_id, name, prefix, created_at, revoked_at, last_used_at from api_keys
                          where user_id = ${userId} order by created_at`;
}

export async function userByApiKey(sql: Sql, key: string): Promise<User | null> {
  if (key.length < 10 || key.length > 200) return null;
  const [row] = await sql<User[]>`
    select u.* from api_keys k join users u on u.id = k.user_id
    where k.key_hash = ${hashApiKey(key)} and k.revoked_at is null and u.disabled_at is null`;
  return row ?? null;
}

export async function getUser(sql: Sql, id: string): Promise<User | null> {
  if (!/^[0-9a-f-]{36}$/i.test(id)) {
    const [byEmail] = await sql<User[]>`select * from users where email = ${id.toLowerCase()}`;
    return byEmail ?? null;
  }
  const [row] = await sql<User[]>`select * from users where id = ${id}`;
  return row ?? null;
}

export async function listUsers(sql: Sql): Promise<User[]> {
  return sql<User[]>`select * from users order by created_at`;
}

export async function updateUser(
  sql: Sql,
  id: string,
  patch: { plan?: string; prefs?: UserPrefs; disabled?: boolean },
): Promise<User | null> {
  if (patch.plan !== undefined && !isPlanName(patch.plan)) throw new Error(`unknown plan "${patch.plan}"`);
  const user = await transaction(sql, async (tx) => {
    const [row] = await tx<User[]>`
      update users set
        plan = coalesce(${patch.plan ?? null}, plan),
        prefs = prefs || ${sql.json((patch.prefs ?? {}) as never)},
        disabled_at = case when ${patch.disabled ?? null}::boolean is null then disabled_at
                           when ${patch.disabled ?? null}::boolean then coalesce(disabled_at, now()) else null end
      where id = ${id} returning *`;
    if (row) await notifyConfigChanged(tx, 'auth');
    return row ?? null;
  });
  if (user) configChangedHere('auth');
  return user;
}
