// Per-process cache of what `GET /api/v1/images/:uuid` reads: the image view (as its two response
// bodies) and the API-key → user lookup. Without it every read is a Postgres round trip, which alone
// caps the API far below a constant server (bench/read-api.ts).
//
// Stale reads after a state change would be bugs, so an entry is only trusted while invalidations are
// guaranteed to arrive:
// - The writers NOTIFY inside their transactions (shared/read-invalidation.ts): the projector names the
//   images of each batch, key/user/pool changes say what kind of thing changed. An invalidation drops the
//   entries; it cannot arrive before the change is visible, nor for a change that rolled back. It does
//   arrive asynchronously (~1 ms after the commit), the one window left; a change made by this process
//   (key revocation through the admin API, a delete) is applied here at once after its commit.
// - While the LISTEN connection is down, nothing is read from or stored into the cache (bypass), and
//   every (re)listen starts from an empty cache: what was missed meanwhile is gone with it.
// - A lookup stores its result only if no invalidation (nor a connection change) happened since it began
//   (one epoch counter): otherwise a row read before a commit could be stored after that commit's
//   invalidation was applied, and be served until the TTL.
// Authorization is not cached with the image: the entry holds the owner's id and share link, and every
// request compares them with its own caller.
import { Counter, Gauge } from 'prom-client';
import type { Logger } from '../../shared/logger.js';
import { registry } from '../../shared/metrics.js';
import { listenReliably, type Listening } from '../../shared/pg-listen.js';
import {
  CONFIG_CHANNEL,
  onLocalInvalidation,
  parseInvalidation,
  readModelChannel,
  type Invalidation,
} from '../../shared/read-invalidation.js';
import { hashApiKey, type User } from '../../shared/users.js';
import type { Names } from '../../streams/subjects.js';
import type { ImageView } from './present.js';

/** An image as the read API answers it; the bodies are final (serialised by the route's schema). */
export interface CachedImage {
  userId: string;
  shareLink: string;
  deleted: boolean;
  /** the owner's body (with EXIF); '' when deleted */
  ownerJson: string;
  /** anyone else's (with the share link); '' when deleted */
  publicJson: string;
}

export interface ReadCacheLimits {
  /** entries per cache (least recently used go first, approximately: see Lru) */
  maxEntries: number;
  /** bytes of JSON bodies held by the image cache */
  maxBytes: number;
  /** a safety net only: correctness comes from the invalidations */
  ttlMs: number;
}

/**
 * 10 000 images × ~3 KB (8 variants, EXIF) ≈ 30 MB; the byte bound keeps a few huge EXIF blocks from
 * growing it past 64 MiB. 60 s: bounds the damage of a missed invalidation no mechanism here detects.
 */
export const DEFAULT_LIMITS: ReadCacheLimits = {
  maxEntries: 10_000,
  maxBytes: 64 * 1024 * 1024,
  ttlMs: 60_000,
};

interface Slot<V> {
  value: V;
  bytes: number;
  expiresAt: number;
  /** hit since it was (re)inserted: spared by the next eviction pass */
  used: boolean;
}

/**
 * Bounded by entries and bytes, with a TTL. Eviction is "second chance" (CLOCK) over Map insertion
 * order: a hit only sets a bit, instead of re-inserting the key (a measurable part of a hit's cost);
 * the eviction pass moves used entries to the end once and takes the first unused one.
 */
class Lru<V> {
  private readonly map = new Map<string, Slot<V>>();
  private bytes = 0;

  constructor(
    private readonly maxEntries: number,
    private readonly maxBytes: number,
    private readonly ttlMs: number,
  ) {}

  get(key: string, now: number): V | undefined {
    const slot = this.map.get(key);
    if (!slot) return undefined;
    if (slot.expiresAt <= now) {
      this.delete(key);
      return undefined;
    }
    slot.used = true;
    return slot.value;
  }

  set(key: string, value: V, bytes: number, now: number): void {
    this.delete(key);
    if (bytes > this.maxBytes) return;
    this.map.set(key, { value, bytes, expiresAt: now + this.ttlMs, used: false });
    this.bytes += bytes;
    while (this.map.size > this.maxEntries || this.bytes > this.maxBytes) {
      const first = this.map.entries().next();
      if (first.done) break;
      const [k, slot] = first.value;
      this.map.delete(k);
      if (slot.used && k !== key) {
        slot.used = false;
        this.map.set(k, slot);
      } else {
        this.bytes -= slot.bytes;
      }
    }
  }

  delete(key: string): void {
    const slot = this.map.get(key);
    if (!slot) return;
    this.map.delete(key);
    this.bytes -= slot.bytes;
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }
}

type Result = 'hit' | 'miss' | 'bypass';
/** Plain numbers on the hot path; the counter reads them at scrape time. */
const tally: Record<'image' | 'auth', Record<Result, number>> = {
  image: { hit: 0, miss: 0, bypass: 0 },
  auth: { hit: 0, miss: 0, bypass: 0 },
};
new Counter({
  name: 'pixelfox_read_cache_lookups_total',
  help: 'Read-cache lookups of the API by cache (image, auth) and result (hit, miss, bypass: LISTEN connection down)',
  labelNames: ['cache', 'result'] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const [cache, results] of Object.entries(tally))
      for (const [result, n] of Object.entries(results)) this.labels(cache, result).inc(n);
  },
});
const invalidations = new Counter({
  name: 'pixelfox_read_cache_invalidations_total',
  help: 'Invalidations applied to the read caches by kind (images, all-images, auth, all; connected, disconnected: the LISTEN connection)',
  labelNames: ['kind'] as const,
  registers: [registry],
});
const invalidatedSeq = new Gauge({
  name: 'pixelfox_read_cache_invalidated_seq',
  help: 'Projector checkpoint up to which the read cache of this process has been told of changes (compare with the checkpoint: the invalidation lag)',
  labelNames: ['namespace'] as const,
  registers: [registry],
});

export class ReadCache {
  private epoch = 0;
  private listening = false;
  private readonly images: Lru<CachedImage>;
  private readonly users: Lru<User>;

  constructor(
    limits: ReadCacheLimits = DEFAULT_LIMITS,
    private readonly now: () => number = Date.now,
  ) {
    this.images = new Lru(limits.maxEntries, limits.maxBytes, limits.ttlMs);
    this.users = new Lru(limits.maxEntries, Infinity, limits.ttlMs);
  }

  /**
   * The user of an API key (null: unknown or revoked; not cached, so a new key works at once). A hit
   * is returned as it is, not as a promise: the hot path of the read API has no await.
   */
  user(key: string, load: () => Promise<User | null>): User | Promise<User | null> {
    if (!this.listening) {
      tally.auth.bypass++;
      return load();
    }
    const h = hashApiKey(key);
    const hit = this.users.get(h, this.now());
    if (hit) {
      tally.auth.hit++;
      return hit;
    }
    tally.auth.miss++;
    const epoch = this.epoch;
    return load().then((user) => {
      if (user && this.unchangedSince(epoch)) this.users.set(h, user, 0, this.now());
      return user;
    });
  }

  /** An image (null: no such row; not cached: nothing would need to evict it on ImageStored). */
  image(id: string, load: () => Promise<CachedImage | null>): CachedImage | Promise<CachedImage | null> {
    if (!this.listening) {
      tally.image.bypass++;
      return load();
    }
    const hit = this.images.get(id, this.now());
    if (hit) {
      tally.image.hit++;
      return hit;
    }
    tally.image.miss++;
    const epoch = this.epoch;
    return load().then((image) => {
      if (image && this.unchangedSince(epoch))
        this.images.set(id, image, image.ownerJson.length + image.publicJson.length + 200, this.now());
      return image;
    });
  }

  private unchangedSince(epoch: number): boolean {
    return this.listening && this.epoch === epoch;
  }

  apply(inv: Invalidation): void {
    this.epoch++;
    invalidations.labels(inv.kind).inc();
    switch (inv.kind) {
      case 'images':
        for (const id of inv.ids) this.images.delete(id);
        return;
      case 'all-images':
        this.images.clear();
        return;
      case 'auth':
        this.users.clear();
        return;
      case 'all':
        this.images.clear();
        this.users.clear();
        return;
      default: {
        const never: never = inv;
        throw new Error(`unknown invalidation ${JSON.stringify(never)}`);
      }
    }
  }

  /** Invalidations arrive (again): start from nothing, since some may have been missed. */
  connected(): void {
    this.flush('connected');
    this.listening = true;
  }

  /** Invalidations may be lost from now on: serve from Postgres until `connected`. */
  disconnected(): void {
    this.listening = false;
    this.flush('disconnected');
  }

  private flush(why: 'connected' | 'disconnected'): void {
    this.epoch++;
    invalidations.labels(why).inc();
    this.images.clear();
    this.users.clear();
  }
}

/** A cache fed by the invalidation channels of this namespace's database; bypassed until listening. */
export function startReadCache(
  databaseUrl: string,
  names: Pick<Names, 'ns'>,
  log: Logger,
  limits: ReadCacheLimits = DEFAULT_LIMITS,
): { cache: ReadCache; close(): Promise<void> } {
  const cache = new ReadCache(limits);
  let seq = 0;
  const seen = invalidatedSeq.labels(names.ns);
  const onNotify = (channel: string, payload: string) => {
    const inv = parseInvalidation(channel, payload);
    cache.apply(inv);
    if ((inv.kind === 'images' || inv.kind === 'all-images') && inv.seq > seq) seen.set((seq = inv.seq));
  };
  const local = onLocalInvalidation(onNotify);
  const listening: Listening = listenReliably(
    databaseUrl,
    [readModelChannel(names), CONFIG_CHANNEL],
    { notify: onNotify, up: () => cache.connected(), down: () => cache.disconnected() },
    log.child({ component: 'read-cache' }),
  );
  return {
    cache,
    close: async () => {
      local();
      cache.disconnected();
      await listening.close();
    },
  };
}

/** The cache entry of an image view: its owner and access checks, and both response bodies. */
export function cachedImage(view: ImageView, body: (includeExif: boolean) => string): CachedImage {
  const i = view.image;
  const deleted = i.deleted_at !== null;
  return {
    userId: i.user_id,
    shareLink: i.share_link,
    deleted,
    ownerJson: deleted ? '' : body(true),
    publicJson: deleted ? '' : body(false),
  };
}
