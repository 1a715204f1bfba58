// NATS KV buckets: the shared places that are not events (they hold no facts, only coordination):
// pool health reports (expire when a node stops reporting), rate-limit counters, and the dedupe index
// that serialises concurrent uploads of the same bytes by one user.
import { Kvm, type KV } from '@nats-io/kv';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { Names } from '../streams/subjects.js';
import type { PoolHealth } from './pools.js';

export interface KvBuckets {
  health: KV;
  rateLimit: KV;
  dedupe: KV;
}

/** A report older than this is gone: a silent node stops getting upload sessions within 30 s. */
export const HEALTH_TTL_MS = 20_000;
export const HEALTH_REPORT_INTERVAL_MS = 5_000;

export async function openBuckets(js: JetStreamClient, n: Names, replicas: number): Promise<KvBuckets> {
  const kvm = new Kvm(js);
  const [health, rateLimit, dedupe] = await Promise.all([
    kvm.create(n.kvBucket('pool_health'), { ttl: HEALTH_TTL_MS, history: 1, replicas }),
    // Counters live one window plus slack.
    kvm.create(n.kvBucket('rate_limits'), { ttl: 3 * 60_000, history: 1, replicas }),
    kvm.create(n.kvBucket('dedupe'), { history: 1, replicas }),
  ]);
  return { health, rateLimit, dedupe };
}

const dec = new TextDecoder();
const enc = new TextEncoder();

export async function readHealth(kv: KV, poolIds: readonly string[]): Promise<Map<string, PoolHealth>> {
  const out = new Map<string, PoolHealth>();
  await Promise.all(
    poolIds.map(async (id) => {
      const e = await kv.get(`pool.${id}`).catch(() => null);
      if (!e || e.operation !== 'PUT' || e.length === 0) return;
      try {
        out.set(id, JSON.parse(dec.decode(e.value)) as PoolHealth);
      } catch {
        // ignore a malformed report
      }
    }),
  );
  return out;
}

export async function writeHealth(kv: KV, h: PoolHealth): Promise<void> {
  await kv.put(`pool.${h.pool_id}`, enc.encode(JSON.stringify(h)));
}

/** KV keys allow [-/_=.a-zA-Z0-9]: anything else (IPv6 colons, …) is hex-encoded. */
export function kvKeyPart(s: string): string {
  return /^[A-Za-z0-9_-]+$/.test(s) ? s : Buffer.from(s).toString('hex');
}

export interface RateResult {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** unix seconds when the window resets */
  reset: number;
}

/**
 * Fixed one-minute window counter shared by every node (compare-and-set on the KV entry). Fails open
 * when NATS is unreachable: the upload itself will then fail on publish with 503 anyway.
 */
export async function hitRateLimit(
  kv: KV,
  scope: string,
  id: string,
  limit: number,
  now = Date.now(),
): Promise<RateResult> {
  const window = Math.floor(now / 60_000);
  const reset = (window + 1) * 60;
  if (limit <= 0) return { allowed: true, limit, remaining: limit, reset };
  const key = `${scope}.${kvKeyPart(id)}.${window}`;
  for (let attempt = 0; attempt < 20; attempt++) {
    const e = await kv.get(key);
    const count = e && e.operation === 'PUT' ? Number(dec.decode(e.value)) || 0 : 0;
    if (count >= limit) return { allowed: false, limit, remaining: 0, reset };
    try {
      if (!e || e.operation !== 'PUT') await kv.create(key, enc.encode('1'));
      else await kv.update(key, enc.encode(String(count + 1)), e.revision);
      return { allowed: true, limit, remaining: Math.max(0, limit - count - 1), reset };
    } catch {
      // lost the race: read again
    }
  }
  return { allowed: false, limit, remaining: 0, reset };
}

export interface DedupeEntry {
  image_id: string;
  at: number;
}

export function dedupeKey(userId: string, sha256: string): string {
  return `u.${kvKeyPart(userId)}.${sha256}`;
}

/** Claims the hash for a new image; returns the existing claim when someone else holds it. */
export async function claimHash(
  kv: KV,
  key: string,
  entry: DedupeEntry,
): Promise<
  { claimed: true; revision: number } | { claimed: false; existing: DedupeEntry; revision: number }
> {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const revision = await kv.create(key, enc.encode(JSON.stringify(entry)));
      return { claimed: true, revision };
    } catch {
      const e = await kv.get(key);
      if (!e || e.operation !== 'PUT') continue;
      return {
        claimed: false,
        existing: JSON.parse(dec.decode(e.value)) as DedupeEntry,
        revision: e.revision,
      };
    }
  }
  throw new Error('could not claim upload hash');
}

/** Takes over a stale claim (its image never got stored) with compare-and-set. */
export async function replaceClaim(
  kv: KV,
  key: string,
  entry: DedupeEntry,
  revision: number,
): Promise<boolean> {
  try {
    await kv.update(key, enc.encode(JSON.stringify(entry)), revision);
    return true;
  } catch {
    return false;
  }
}

/**
 * Releases a claim. When NATS cannot be reached (the very case in which an upload fails at publish) it
 * keeps trying in the background for a minute: a claim left behind would answer the client's retries
 * with 409 until it is stale (2 min). A minute stays inside that window, so a stale claim that another
 * upload took over is never deleted.
 */
export async function releaseHash(kv: KV, key: string, retryForMs = 60_000): Promise<void> {
  const until = Date.now() + retryForMs;
  const again = (): void => {
    if (Date.now() < until) setTimeout(() => void kv.delete(key).catch(again), 1_000).unref();
  };
  await kv.delete(key).catch(again);
}
