// What tells the API's read caches (services/api/read-cache.ts) that a row they may hold has changed:
// a Postgres NOTIFY sent inside the transaction that changes it, so it is delivered if and only if the
// change committed, and never before the change is visible.
//
// Two channels:
// - read models (namespace-specific): the projector names the images each batch touched; a rebuild's
//   switch-over says "everything".
// - configuration (users, API keys, storage pools): these tables belong to the database, whatever
//   namespace runs on it, so the channel is the database's (NOTIFY never leaves a database).
import { createHash } from 'node:crypto';
import type { Tx } from './db.js';
import type { Names } from '../streams/subjects.js';

/** Postgres truncates channel names to 63 bytes (NAMEDATALEN - 1). */
const MAX_CHANNEL = 63;

export function readModelChannel(n: Pick<Names, 'ns'>): string {
  const name = `pixelfox_rm_${n.ns}`;
  return name.length <= MAX_CHANNEL
    ? name
    : `pixelfox_rm_${createHash('sha256').update(n.ns).digest('hex').slice(0, 40)}`;
}

export const CONFIG_CHANNEL = 'pixelfox_config';

/** Payload meaning "drop everything you hold". */
export const FLUSH_ALL = '*';

/**
 * A NOTIFY payload must stay under 8000 bytes; 7 000 leaves room for the sequence prefix. One image id
 * is 37 bytes with its separator, so ~190 per notification.
 */
const MAX_PAYLOAD = 7_000;
/** More chunks than this (a batch of > ~1 500 images, i.e. a catch-up): one flush is cheaper. */
const MAX_CHUNKS = 8;

/**
 * The payloads naming `imageIds` as changed by the batch that moved the checkpoint to `seq`:
 * `<seq> <id>,<id>,…`, or `<seq> *` when there are too many to name.
 */
export function imagePayloads(seq: number, imageIds: Iterable<string>): string[] {
  const ids = [...new Set(imageIds)];
  const prefix = `${seq} `;
  const chunks: string[] = [];
  let cur: string[] = [];
  let len = prefix.length;
  for (const id of ids) {
    if (len + id.length + 1 > MAX_PAYLOAD) {
      chunks.push(prefix + cur.join(','));
      cur = [];
      len = prefix.length;
    }
    cur.push(id);
    len += id.length + 1;
  }
  if (cur.length > 0) chunks.push(prefix + cur.join(','));
  return chunks.length > MAX_CHUNKS ? [prefix + FLUSH_ALL] : chunks;
}

/** Sent by the projector inside the transaction that applies the batch (one statement, pipelined). */
export function notifyImagesChanged(tx: Tx, n: Pick<Names, 'ns'>, payloads: readonly string[]) {
  return tx`select pg_notify(${readModelChannel(n)}, p) from unnest(${payloads as string[]}::text[]) as p`;
}

/** The read models were swapped or replaced wholesale (a rebuild). */
export function notifyReadModelsReplaced(tx: Tx, n: Pick<Names, 'ns'>) {
  return tx`select pg_notify(${readModelChannel(n)}, ${`0 ${FLUSH_ALL}`})`;
}

export type ConfigChange = 'auth' | 'pools';

/** Users or API keys (auth), storage pools (their URLs are part of the image view) changed. */
export function notifyConfigChanged(tx: Tx, what: ConfigChange) {
  return tx`select pg_notify(${CONFIG_CHANNEL}, ${what})`;
}

type LocalListener = (channel: string, payload: string) => void;
const local = new Set<LocalListener>();

/**
 * After the commit of a change notified with notifyConfigChanged: the caches of this process drop the
 * rows at once. Their NOTIFY comes a moment later (delivered asynchronously), and a key revoked through
 * the admin API must be refused by the very next request to that node.
 */
export function configChangedHere(what: ConfigChange): void {
  for (const fn of local) fn(CONFIG_CHANNEL, what);
}

export function onLocalInvalidation(fn: LocalListener): () => void {
  local.add(fn);
  return () => void local.delete(fn);
}

export type Invalidation =
  | { kind: 'images'; seq: number; ids: string[] }
  | { kind: 'all-images'; seq: number }
  | { kind: 'auth' }
  /** unknown payload: drop everything (a newer sender, or a hand-written NOTIFY) */
  | { kind: 'all' };

export function parseInvalidation(channel: string, payload: string): Invalidation {
  if (channel === CONFIG_CHANNEL) {
    if (payload === 'auth') return { kind: 'auth' };
    if (payload === 'pools') return { kind: 'all-images', seq: 0 };
    return { kind: 'all' };
  }
  const m = /^(\d+) (.+)$/s.exec(payload);
  if (!m?.[1] || !m[2]) return { kind: 'all' };
  const seq = Number(m[1]);
  if (m[2] === FLUSH_ALL) return { kind: 'all-images', seq };
  return { kind: 'images', seq, ids: m[2].split(',') };
}
