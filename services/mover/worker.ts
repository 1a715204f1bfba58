// The mover: moves one image (original and every variant) out of its pool, on the node that serves the
// source pool (consumer `<ns>_mover-<node>`, one MoveRequested per image). File moves are a protocol:
//
//   1. copy every file to the target pool (a local copy, or a PUT to the target node's replicate
//      endpoint), each verified by size and SHA-256 against what the read model recorded;
//   2. publish ImageMoved: when it is projected, the image's pool, node and URLs switch and the target
//      pool is charged. Until then every URL still points at the source, which is untouched;
//   3. after that projection, delete the source files and publish SourceFilesDeleted (the source pool
//      gets its bytes back).
//
// Each step checks what is already done, and event ids derive from move_id + image + step, so a crash at
// any point resumes on redelivery (copies are skipped when already verified, the switch is republished
// and deduplicated, the cleanup runs once). Refusals that retrying cannot fix (configuration, the target
// refusing the file, a corrupt source) end the move with MoveFailed; trouble that may pass (network, 5xx,
// disk) is retried with backoff and becomes MoveFailed on the last delivery.
import { ack, retry, type Delivery, type Handler, type Outcome } from '../../shared/consumer.js';
import type { Sql } from '../../shared/db.js';
import { errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import type { Pool } from '../../shared/pools.js';
import { normaliseStoredPath, PathEscapeError } from '../../shared/storage/paths.js';
import { waitForCheckpoint } from '../../projections/projector.js';
import { CONSUMERS } from '../../streams/definitions.js';
import type { EventOf, MovedFile } from '../../streams/events/catalog.js';
import { decodeEvent, deterministicId, makeEvent } from '../../streams/events/codec.js';
import type { Ctx } from '../context.js';
import { LocalPoolStore, poolStore, S3PoolStore, StoreError } from '../storage/pool-store.js';
import { ContentMismatchError, copyLocal, FileExistsError, fingerprint, pushFile } from './files.js';
import { copyFromS3, copyToS3, undoS3Copies } from './s3-files.js';
import { filesOf, moveRetryDelayMs, planMoveRoute, totalBytes, type VariantFilesRow } from './plan.js';

/** How long the mover waits for its ImageMoved to be projected before handing the message back. */
const PROJECTION_WAIT_MS = 10_000;
/** Progress acks while a move runs: well inside the mover consumer's first backoff step (10 s). */
const HEARTBEAT_MS = 3_000;

interface MoveImageRow {
  id: string;
  storage_pool_id: string;
  node_id: string;
  stored_path: string;
  size: number;
  sha256: string;
  status: string;
  deleted_at: Date | null;
  last_cleanup_move_id: string | null;
}

async function loadImage(sql: Sql, id: string): Promise<MoveImageRow | null> {
  const [row] = await sql<MoveImageRow[]>`
    select id, storage_pool_id, node_id, stored_path, size, sha256, status, deleted_at, last_cleanup_move_id
    from images where id = ${id}`;
  return row ?? null;
}

/** The variants in the image's pool: exactly the rows ImageMoved switches and charges to the target. */
async function loadVariants(sql: Sql, id: string, poolId: string): Promise<VariantFilesRow[]> {
  return sql<VariantFilesRow[]>`
    select path, bytes, sha256 from image_variants where image_id = ${id} and storage_pool_id = ${poolId}
    order by variant_type`;
}

type MoveRequested = EventOf<'MoveRequested'>;

interface Move {
  ctx: Ctx;
  event: MoveRequested;
  d: Delivery;
  log: Logger;
  /** Deterministic id of this move's event for `step`. */
  step(name: string): string;
  /** MoveFailed (acked), after `undo`. */
  fail(reason: string, undo?: () => Promise<void>): Promise<Outcome>;
  /** Try again later; on the last delivery the move fails instead. */
  later(reason: string, undo?: () => Promise<void>): Promise<Outcome>;
}

export function moveHandler(ctx: Ctx, pools: () => Pool[]): Handler {
  // Two messages about one image (a move started twice) never run side by side in this process.
  const running = new Map<string, Promise<Outcome>>();
  return async (event, d) => {
    if (event.type !== 'MoveRequested') return ack;
    const before = running.get(event.image_id);
    const mine = (before ?? Promise.resolve(ack))
      .catch(() => ack)
      .then(() => moveImage(ctx, pools, event, d));
    running.set(event.image_id, mine);
    // With a backoff configured, JetStream redelivers after backoff[0] (10 s for this consumer), not
    // after ack_wait: a copy of a big file must say it is still working more often than that.
    const beat = setInterval(() => d.working(), HEARTBEAT_MS);
    try {
      return await mine;
    } finally {
      clearInterval(beat);
      if (running.get(event.image_id) === mine) running.delete(event.image_id);
    }
  };
}

async function moveImage(ctx: Ctx, pools: () => Pool[], event: MoveRequested, d: Delivery): Promise<Outcome> {
  const m = event.data;
  const log = ctx.log.child({ service: 'mover', imageId: event.image_id, moveId: m.move_id });
  const lastDelivery = CONSUMERS.mover.maxDeliver > 0 && d.deliveryCount >= CONSUMERS.mover.maxDeliver;
  const mv: Move = {
    ctx,
    event,
    d,
    log,
    step: (name) => deterministicId(m.move_id, event.image_id, name),
    fail: async (reason, undo) => {
      await undo?.().catch((err: unknown) =>
        log.warn({ err }, 'could not remove the copies of a failed move'),
      );
      try {
        await ctx.pub.publish(
          makeEvent('MoveFailed', {
            id: mv.step('failed'),
            image_id: event.image_id,
            node_id: event.node_id,
            pool_id: m.from_pool_id,
            causation_id: event.id,
            correlation_id: event.correlation_id,
            data: {
              move_id: m.move_id,
              from_pool_id: m.from_pool_id,
              to_pool_id: m.to_pool_id,
              reason: reason.slice(0, 500),
            },
          }),
        );
      } catch (err) {
        return retry(5_000, `could not record the failed move: ${errorMessage(err)}`);
      }
      log.warn({ reason }, 'move failed');
      return ack;
    },
    later: async (reason, undo) =>
      lastDelivery
        ? mv.fail(`gave up after ${d.deliveryCount} attempts: ${reason}`, undo)
        : retry(moveRetryDelayMs(d.deliveryCount), reason),
  };

  const img = await loadImage(ctx.sql, event.image_id);
  if (!img || img.deleted_at) return ack; // deleted or purged: nothing left to move
  const all = pools();
  const from = all.find((p) => p.id === m.from_pool_id);
  // Switched already (a redelivery after a crash): resume at the source cleanup.
  if (img.storage_pool_id === m.to_pool_id) return cleanUpSource(mv, from);
  if (img.storage_pool_id !== m.from_pool_id) {
    log.info({ poolId: img.storage_pool_id }, 'image is no longer in the source pool; nothing to move');
    return ack;
  }
  const route = planMoveRoute(
    from,
    all.find((p) => p.id === m.to_pool_id),
    ctx.config.nodeId,
  );
  if (!route.ok) return mv.fail(route.reason);
  // Variants still being written would land in the source after the copy: move finished images only.
  if (img.status === 'pending' || img.status === 'processing')
    return mv.later('the image is still being processed');
  if (route.mode === 'remote' && !ctx.config.replicationSecret)
    return mv.fail('REPLICATION_SECRET is not configured on this node');

  const files = filesOf(img, await loadVariants(ctx.sql, event.image_id, m.from_pool_id));
  const bad = files.find((f) => !normaliseStoredPath(f.path).ok);
  if (bad) return mv.fail(`recorded path ${bad.path} is not a valid pool path`);

  // 1. Copy and verify every file. Source and target are stores: a directory of this node, or the
  // bucket of an S3 pool (then the copy is an upload or a download, verified the same way).
  const source = poolStore(route.source, ctx.config);
  const target = route.mode === 'remote' ? null : poolStore(route.target, ctx.config);
  if (!source || (route.mode !== 'remote' && !target))
    return mv.fail('the source or target pool has no base_path or bucket');
  // Copies of this image in the target are orphans while the image is not switched: a failed move
  // removes those that hold exactly our bytes (never a different file that happened to be there).
  const undo = async () => {
    if (target instanceof S3PoolStore) return undoS3Copies(target, files);
    if (!(target instanceof LocalPoolStore)) return;
    for (const f of files) {
      const there = await fingerprint(target.local, f.path);
      if (there && there.size === f.size && there.sha256 === f.sha256) await target.local.remove(f.path);
    }
  };
  let copied = 0;
  for (const f of files) {
    d.working();
    if (d.signal.aborted) return retry(1_000, 'shutting down');
    let st: { size: number } | null;
    try {
      st = await source.stat(f.path);
    } catch (err) {
      return isPermanent(err)
        ? mv.fail(`${f.path}: ${errorMessage(err)}`, undo)
        : mv.later(`${f.path}: ${errorMessage(err)}`, undo);
    }
    if (!st) return mv.fail(`source file ${f.path} is missing`, undo);
    if (st.size !== f.size)
      return mv.fail(`source file ${f.path} has ${st.size} bytes, ${f.size} were recorded`, undo);
    if (target) {
      try {
        const r =
          target instanceof S3PoolStore
            ? await copyToS3(source, target, f, () => d.working())
            : source instanceof S3PoolStore
              ? await copyFromS3(source, (target as LocalPoolStore).local, f)
              : await copyLocal((source as LocalPoolStore).local, (target as LocalPoolStore).local, f);
        if (r === 'stored') copied++;
      } catch (err) {
        if (isPermanent(err)) return mv.fail(`${f.path}: ${errorMessage(err)}`, undo);
        return mv.later(`${f.path}: ${errorMessage(err)}`, undo);
      }
    } else if (route.mode === 'remote') {
      let body;
      try {
        body = await source.openRead(f.path);
      } catch (err) {
        return mv.later(`${f.path}: ${errorMessage(err)}`);
      }
      const r = await pushFile({
        url: route.url,
        secret: ctx.config.replicationSecret,
        poolId: route.target.id,
        file: f,
        source: body,
        signal: d.signal,
      });
      if (r.verdict !== 'ok')
        return r.verdict === 'permanent'
          ? mv.fail(`${f.path}: ${r.reason}`)
          : mv.later(`${f.path}: ${r.reason}`);
      if (r.result === 'stored') copied++;
    }
  }

  // 2. Switch. A last look first: an image deleted meanwhile is not switched into the target.
  const now = await loadImage(ctx.sql, event.image_id);
  if (!now || now.deleted_at) return mv.fail('the image was deleted during the move', undo);
  if (now.storage_pool_id === m.to_pool_id) return cleanUpSource(mv, from);
  if (now.storage_pool_id !== m.from_pool_id) return ack;
  let seq: number;
  try {
    const pub = await ctx.pub.publish(
      makeEvent('ImageMoved', {
        id: mv.step('moved'),
        image_id: event.image_id,
        node_id: route.target.node_id,
        pool_id: route.target.id,
        causation_id: event.id,
        correlation_id: event.correlation_id,
        data: {
          move_id: m.move_id,
          from_pool_id: m.from_pool_id,
          to_pool_id: m.to_pool_id,
          to_node_id: route.target.node_id,
          files,
        },
      }),
    );
    seq = pub.seq;
  } catch (err) {
    // Never a MoveFailed here: the publish may have been stored, and then the copies are the image.
    return retry(moveRetryDelayMs(d.deliveryCount), `could not publish ImageMoved: ${errorMessage(err)}`);
  }
  log.info(
    { files: files.length, copied, bytes: totalBytes(files), mode: route.mode },
    'image switched to target pool',
  );
  // The source files are deleted only once readers are sent to the target.
  try {
    await waitForCheckpoint(ctx.sql, seq, PROJECTION_WAIT_MS);
  } catch {
    return retry(5_000, 'ImageMoved is not projected yet');
  }
  return cleanUpSource(mv, from);
}

/** The image's last ImageMoved event (on the subject of the node it was moved to), or null. */
async function lastImageMoved(
  ctx: Ctx,
  nodeId: string,
  imageId: string,
): Promise<EventOf<'ImageMoved'> | null> {
  const msg = await ctx.nats.jsm.streams.getMessage(ctx.names.stream, {
    last_by_subj: ctx.names.eventSubject('ImageMoved', nodeId, imageId),
  });
  if (!msg) return null;
  const e = decodeEvent(msg.data);
  return e.type === 'ImageMoved' ? e : null;
}

/** 3. The image points at the target: delete the source files and give the source pool its bytes back. */
async function cleanUpSource(mv: Move, from: Pool | undefined): Promise<Outcome> {
  const { ctx, event, log } = mv;
  const m = event.data;
  const img = await loadImage(ctx.sql, event.image_id);
  if (!img) return ack;
  if (img.storage_pool_id !== m.to_pool_id) {
    log.warn(
      { poolId: img.storage_pool_id },
      'ImageMoved did not switch the image (it left the source pool first)',
    );
    return ack;
  }
  if (img.last_cleanup_move_id === m.move_id) return ack; // SourceFilesDeleted of this move is projected
  // Only the move whose ImageMoved switched the image hands the source its bytes back, so a move started
  // twice never does it twice: the image's last ImageMoved names that move.
  // TODO(projections): recording the switching move_id on images would make this a read-model lookup.
  let last: EventOf<'ImageMoved'> | null;
  try {
    last = await lastImageMoved(ctx, img.node_id, event.image_id);
  } catch (err) {
    return retry(5_000, `could not read the image's ImageMoved: ${errorMessage(err)}`);
  }
  if (!last) return retry(5_000, 'ImageMoved of the image not found');
  if (last.data.move_id !== m.move_id || last.data.from_pool_id !== m.from_pool_id) {
    log.info({ by: last.data.move_id }, 'another move switched this image; nothing to clean up');
    return ack;
  }
  // An S3 source is reachable from every node; a local one only from its own.
  const store = from ? poolStore(from, ctx.config) : null;
  if (!from || !store || (!store.remote && from.node_id !== ctx.config.nodeId))
    return retry(60_000, `source pool ${m.from_pool_id} is not served by this node any more`);
  const files: MovedFile[] = last.data.files;
  try {
    for (const f of files) await store.remove(f.path);
    await ctx.pub.publish(
      makeEvent('SourceFilesDeleted', {
        id: mv.step('source-deleted'),
        image_id: event.image_id,
        node_id: from.node_id,
        pool_id: from.id,
        causation_id: event.id,
        correlation_id: event.correlation_id,
        data: {
          move_id: m.move_id,
          from_pool_id: from.id,
          files: files.map((f) => f.path),
          bytes: totalBytes(files),
        },
      }),
    );
  } catch (err) {
    return retry(moveRetryDelayMs(mv.d.deliveryCount), `source cleanup failed: ${errorMessage(err)}`);
  }
  log.info({ files: files.length, bytes: totalBytes(files) }, 'image moved; source files deleted');
  return ack;
}

/** Refusals that retrying cannot change: a different or corrupt file, a bad path, a store's permanent error. */
function isPermanent(err: unknown): boolean {
  return (
    err instanceof ContentMismatchError ||
    err instanceof FileExistsError ||
    err instanceof PathEscapeError ||
    (err instanceof StoreError && !err.transient)
  );
}
