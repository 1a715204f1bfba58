// The pure decisions of a pool move: which way the files travel (local copy or push to the target node's
// replicate endpoint), which files belong to an image, how an answer of the target is read, and how long
// to wait before the next attempt. No I/O here; the worker (./worker.ts) is the shell around it.
import type { MovedFile } from '../../streams/events/catalog.js';
import type { Pool } from '../../shared/pools.js';
import { ANY_NODE } from '../../streams/subjects.js';

/** Path of the replication endpoint on every storage node (see services/storage-node/replicate.ts). */
export const REPLICATE_PATH = '/api/internal/replicate';
const UPLOAD_PATH = /\/api\/internal\/upload\/?$/;

/**
 * The replicate URL of a pool's node, derived from its `upload_api_url` (same host, same prefix):
 * `https://n2.example/api/internal/upload` → `https://n2.example/api/internal/replicate`.
 * Null when the URL is missing, not http(s), or does not end in /api/internal/upload.
 */
export function replicateUrlFor(uploadApiUrl: string | null | undefined): string | null {
  if (!uploadApiUrl) return null;
  let u: URL;
  try {
    u = new URL(uploadApiUrl);
  } catch {
    return null;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
  const m = UPLOAD_PATH.exec(u.pathname);
  if (!m) return null;
  u.pathname = u.pathname.slice(0, m.index) + REPLICATE_PATH;
  u.search = '';
  u.hash = '';
  return u.toString();
}

export type MoveRoute =
  | { ok: true; mode: 'local'; source: Pool; target: Pool; sourceBase: string; targetBase: string }
  | { ok: true; mode: 'remote'; source: Pool; target: Pool; sourceBase: string; url: string }
  /** upload into an S3 pool, from a local pool of this node (sourceBase) or from another S3 pool (null) */
  | { ok: true; mode: 'to-s3'; source: Pool; target: Pool; sourceBase: string | null }
  /** download from an S3 pool into a local pool of this node */
  | { ok: true; mode: 'from-s3'; source: Pool; target: Pool; targetBase: string }
  | { ok: false; reason: string };

/**
 * The node whose mover consumer takes a move (the MoveRequested's node): the source's node, which
 * reads the files; out of an S3 pool (readable from every node) the target's node, so that the copy is a
 * local write there; between two S3 pools any node (`_any`).
 */
export function moverNodeFor(from: Pool, to: Pool): string {
  if (from.storage_type !== 's3') return from.node_id;
  return to.storage_type === 's3' ? ANY_NODE : to.node_id;
}

/** Why an S3 pool cannot take part in moves, or null. */
function s3Refusal(p: Pool, role: 'source' | 'target'): string | null {
  if (p.storage_type !== 's3') return null;
  if (!p.s3_bucket) return `${role} S3 pool ${p.name} has no bucket`;
  if (p.node_id !== ANY_NODE)
    return `${role} S3 pool ${p.name} must be served by every node (node_id ${ANY_NODE}), not ${p.node_id}`;
  return null;
}

/**
 * How the files of a move travel, decided on the node `nodeId` that runs the mover for the source pool.
 * Every refusal here is permanent (retrying cannot fix configuration): the move fails with the reason.
 */
export function planMoveRoute(from: Pool | undefined, to: Pool | undefined, nodeId: string): MoveRoute {
  if (!from) return { ok: false, reason: 'source pool is unknown' };
  if (!to) return { ok: false, reason: 'target pool is unknown' };
  if (from.id === to.id) return { ok: false, reason: 'source and target are the same pool' };
  const s3 = s3Refusal(from, 'source') ?? s3Refusal(to, 'target');
  if (s3) return { ok: false, reason: s3 };
  if (from.storage_type === 's3') {
    if (!to.is_active) return { ok: false, reason: `target pool ${to.name} is inactive` };
    if (to.storage_type === 's3')
      return { ok: true, mode: 'to-s3', source: from, target: to, sourceBase: null };
    if (!to.base_path) return { ok: false, reason: 'target pool has no base_path' };
    if (to.node_id !== nodeId)
      return {
        ok: false,
        reason: `moves out of S3 run on the target's node ${to.node_id}, not on ${nodeId}`,
      };
    return { ok: true, mode: 'from-s3', source: from, target: to, targetBase: to.base_path };
  }
  if (from.node_id !== nodeId)
    return { ok: false, reason: `source pool belongs to node ${from.node_id}, not to ${nodeId}` };
  if (!from.base_path) return { ok: false, reason: 'source pool has no base_path' };
  if (!to.is_active) return { ok: false, reason: `target pool ${to.name} is inactive` };
  if (to.storage_type === 's3')
    return { ok: true, mode: 'to-s3', source: from, target: to, sourceBase: from.base_path };
  if (to.node_id === nodeId) {
    if (!to.base_path) return { ok: false, reason: 'target pool has no base_path' };
    return {
      ok: true,
      mode: 'local',
      source: from,
      target: to,
      sourceBase: from.base_path,
      targetBase: to.base_path,
    };
  }
  const url = replicateUrlFor(to.upload_api_url);
  if (!url)
    return {
      ok: false,
      reason: `target pool ${to.name} has no upload_api_url ending in /api/internal/upload to replicate to`,
    };
  return { ok: true, mode: 'remote', source: from, target: to, sourceBase: from.base_path, url };
}

export interface ImageFilesRow {
  stored_path: string;
  size: number;
  sha256: string;
}
export interface VariantFilesRow {
  path: string;
  bytes: number;
  sha256: string;
}

/**
 * Every file of an image as the read models record it: the original first, then each variant row. One
 * entry per row (not per distinct path), so the list matches what the projections charged the pool.
 */
export function filesOf(image: ImageFilesRow, variants: readonly VariantFilesRow[]): MovedFile[] {
  return [
    { path: image.stored_path, size: Number(image.size), sha256: image.sha256 },
    ...variants.map((v) => ({ path: v.path, size: Number(v.bytes), sha256: v.sha256 })),
  ];
}

export function totalBytes(files: readonly MovedFile[]): number {
  return files.reduce((sum, f) => sum + f.size, 0);
}

export type PushVerdict = 'ok' | 'transient' | 'permanent';

/**
 * How the mover reads the replicate endpoint's status: 201 stored and 200 skipped are success; a timeout,
 * a rate limit or a server error may pass; any other answer (bad path, wrong secret, unknown or inactive
 * pool, different file already there, checksum mismatch, too large) will not change by retrying.
 */
export function classifyReplicateStatus(status: number): PushVerdict {
  if (status === 200 || status === 201) return 'ok';
  if (status === 408 || status === 425 || status === 429 || status >= 500) return 'transient';
  return 'permanent';
}

/** 2 s, 4 s, 8 s … capped at a minute: the mover consumer allows 10 deliveries (~5 minutes in all). */
export function moveRetryDelayMs(deliveryCount: number): number {
  const n = Math.max(1, Math.floor(deliveryCount));
  return Math.min(60_000, 2_000 * 2 ** (n - 1));
}
