// The projection engine: reads the event stream in order and applies each event to the read models in
// one transaction together with its checkpoint (the last applied stream sequence). A crash at any point
// neither loses nor double-applies an event. Many events per transaction, applied as a few set-based
// statements (one per event type and round: see groupBatch), pipelined, for speed.
//
// Only one projector applies at a time: a Postgres advisory lock elects the leader (a standby takes over
// when the leader's session dies), and every batch additionally moves the checkpoint with a
// compare-and-set, so even two leaders could never apply the same event twice.
import type postgres from 'postgres';
import { DeliverPolicy, type JetStreamClient } from '@nats-io/jetstream';
import { decodeEvent } from '../streams/events/codec.js';
import type { EventType } from '../streams/events/catalog.js';
import type { Names } from '../streams/subjects.js';
import { READ_MODEL_SCHEMA, transaction, type Sql } from '../shared/db.js';
import { imagePayloads, notifyImagesChanged } from '../shared/read-invalidation.js';
import type { Logger } from '../shared/logger.js';
import { errorMessage } from '../shared/errors.js';
import { applyGroup, READ_MODELS } from './read-models/index.js';
import type { Applied, Query, ReadModel } from './read-models/types.js';
import { READ_MODEL_TABLES } from './schema.js';

const LEADER_LOCK = 727_100;
/** While a batch is in flight, the receive loop yields to the event loop every this many messages. */
const YIELD_EVERY = 128;

/** Held shared by every live batch, exclusively by a rebuild's switch-over (see ./rebuild.ts). */
export const SWAP_LOCK = 727_101;

export interface ProjectorState {
  leader: boolean;
  connected: boolean;
  lastSeq: number;
  lastError: string | null;
  appliedEvents: number;
}

export interface ProjectorOptions {
  js: JetStreamClient;
  sql: Sql;
  names: Names;
  log: Logger;
  signal: AbortSignal;
  /** Read-model schema to write into (the live `rm`, or a rebuild's fresh schema). */
  schema?: string;
  checkpointName?: string;
  batchSize?: number;
  /** Read models to apply (default: all of READ_MODELS). */
  models?: readonly ReadModel[];
  /** Stop once this sequence is applied (rebuilds); otherwise run until aborted. */
  stopAtSeq?: number;
  /** Skip leader election (rebuilds write into their own schema). */
  exclusive?: boolean;
  onBatch?: (lastSeq: number, count: number) => void;
  state?: ProjectorState;
}

export function newProjectorState(): ProjectorState {
  return { leader: false, connected: false, lastSeq: 0, lastError: null, appliedEvents: 0 };
}

class CheckpointMoved extends Error {}

/**
 * A rebuild (or a projector catching up) fills tables much faster than autovacuum notices (and it may
 * be off): with the statistics of an empty table the planner takes, e.g., a partial index over the
 * whole table for a lookup by key, and every statement gets slower as the table grows. So the tables
 * are analyzed each time the events applied by this run have doubled: a handful of times per rebuild.
 */
const FIRST_ANALYZE = 5_000;

async function analyze(sql: Sql, schema: string): Promise<void> {
  const tables = Object.keys(READ_MODEL_TABLES).map((t) => `"${schema}"."${t}"`);
  await sql.unsafe(`analyze ${tables.join(', ')}`);
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });

export async function readCheckpoint(sql: Sql, schema: string, name: string): Promise<number> {
  await sql.unsafe(
    `insert into "${schema}".projection_checkpoint (name, last_seq) values ($1, 0) on conflict do nothing`,
    [name],
  );
  return checkpointSeq(sql, schema, name);
}

interface LockSession {
  pid: number;
  started: string;
}

/**
 * sql.reserve(), waiting at most `ms`: after a Postgres restart, postgres.js 3.4.9 can drop a reserve
 * request it handed to a reconnecting connection, and that reserve() never settles. A connection granted
 * after the timeout is handed straight back.
 */
async function reserveWithin(sql: Sql, ms: number): Promise<Awaited<ReturnType<Sql['reserve']>>> {
  const pending = sql.reserve();
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      pending,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no connection reserved within ${ms} ms`)), ms);
      }),
    ]);
  } catch (err) {
    pending.then(
      (c) => c.release(),
      () => undefined,
    );
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Whether the backend of a reserved connection is still there (asked on another connection). */
async function sessionAlive(sql: Sql, s: LockSession | null): Promise<boolean> {
  if (!s) return false;
  return sql`select 1 from pg_stat_activity where pid = ${s.pid} and backend_start::text = ${s.started}`.then(
    (rows) => rows.length > 0,
    () => false,
  );
}

export async function runProjector(o: ProjectorOptions): Promise<void> {
  const schema = o.schema ?? 'rm';
  const name = o.checkpointName ?? 'main';
  const state = o.state ?? newProjectorState();
  const models = o.models ?? Object.values(READ_MODELS);
  const batchSize = o.batchSize ?? 1000;
  const log = o.log.child({ component: 'projector', schema });
  const stats = { nextAnalyzeAt: FIRST_ANALYZE, applied: 0 };

  while (!o.signal.aborted) {
    let lockConn: Awaited<ReturnType<Sql['reserve']>> | null = null;
    let session: LockSession | null = null;
    try {
      if (!o.exclusive) {
        lockConn = await reserveWithin(o.sql, 3_000);
        state.connected = true;
        const [row] = await lockConn<({ ok: boolean } & LockSession)[]>`
          select pg_try_advisory_lock(${LEADER_LOCK}) as ok, pg_backend_pid() as pid,
                 (select backend_start::text from pg_stat_activity where pid = pg_backend_pid()) as started`;
        session = row ?? null;
        if (!row?.ok) {
          state.leader = false;
          lockConn.release();
          lockConn = null;
          await sleep(1000, o.signal);
          continue;
        }
        state.leader = true;
        log.info('projector is the leader');
      }
      const done = await follow(o, schema, name, state, models, batchSize, log, stats);
      if (done) return;
    } catch (err) {
      state.lastError = errorMessage(err);
      state.connected = !/connect|ECONNREFUSED|terminat/i.test(state.lastError);
      if (!(err instanceof CheckpointMoved)) log.warn({ err }, 'projector interrupted; retrying');
      await sleep(1000, o.signal);
    } finally {
      // postgres.js 3.4.9 puts a reserved connection that closed meanwhile back among the open ones on
      // release(), and the next query on it writes to a null socket: an uncatchable TypeError that kills
      // the process (porsager/postgres#1208). The pool took a closed connection back by itself, and its
      // session and lock died with it, so only a live session is unlocked and released.
      if (lockConn && (await sessionAlive(o.sql, session))) {
        await lockConn`select pg_advisory_unlock(${LEADER_LOCK})`.catch(() => undefined);
        lockConn.release();
      }
      state.leader = false;
    }
  }
}

/**
 * Applies events from the checkpoint on; returns true when stopAtSeq was reached. At most one batch is
 * in flight (each transaction moves the checkpoint from where the previous one left it); while it is
 * applied by Postgres, the next one is received and decoded here. A batch starts when it is full, when
 * the stream has nothing more pending, or at stopAtSeq, and if the one before is still in flight then,
 * as soon as that one commits: events that trickle in while a batch commits (a worker's pipelined
 * results arrive one by one) go into one next batch instead of one transaction each.
 */
async function follow(
  o: ProjectorOptions,
  schema: string,
  name: string,
  state: ProjectorState,
  models: readonly ReadModel[],
  batchSize: number,
  log: Logger,
  stats: { nextAnalyzeAt: number; applied: number },
): Promise<boolean> {
  let lastSeq = await readCheckpoint(o.sql, schema, name);
  state.lastSeq = lastSeq;
  state.connected = true;
  state.lastError = null;
  if (o.stopAtSeq !== undefined && lastSeq >= o.stopAtSeq) return true;

  const consumer = await o.js.consumers.get(o.names.stream, {
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: lastSeq + 1,
  });
  const messages = await consumer.consume({ max_messages: Math.max(batchSize * 2, 256) });
  const stop = () => void messages.stop();
  o.signal.addEventListener('abort', stop, { once: true });
  // After a NATS restart nats.js 3.4.0 recreates the vanished ordered consumer but pulls a batch of 0
  // and stalls until two idle heartbeats are missed (30 s): start over from the checkpoint instead.
  void (async () => {
    for await (const s of messages.status()) if (s.type === 'ordered_consumer_recreated') return stop();
  })().catch(() => undefined);

  /** Received and not yet handed to a transaction (undecodable events are counted, not kept). */
  let batch: Applied[] = [];
  let received = 0;
  let receivedSeq = lastSeq;
  /** Whether `batch` is to be applied as soon as nothing is in flight. */
  let flushWanted = false;
  /** The batch in flight, settled (bookkeeping done, the next batch started if wanted); never rejects. */
  let inFlight: Promise<void> | null = null;
  let failure: { err: unknown } | null = null;

  const start = (): void => {
    const events = batch;
    const count = received;
    const toSeq = receivedSeq;
    batch = [];
    received = 0;
    flushWanted = false;
    inFlight = (async () => {
      lastSeq = await applyBatch(o, schema, name, lastSeq, toSeq, events, models);
      state.lastSeq = lastSeq;
      state.appliedEvents += count;
      stats.applied += count;
      if (stats.applied >= stats.nextAnalyzeAt) {
        stats.nextAnalyzeAt *= 2;
        await analyze(o.sql, schema);
      }
      o.onBatch?.(lastSeq, count);
    })().then(
      () => {
        inFlight = null;
        if (flushWanted && received > 0 && !failure) start();
      },
      (err: unknown) => {
        // The receive loop ends and follow() rethrows: the projector starts over from the checkpoint.
        inFlight = null;
        failure ??= { err };
        stop();
      },
    );
  };
  /** Until nothing is in flight (batches wanted meanwhile are started and waited for too). */
  const drain = async () => {
    while (inFlight) await inFlight;
  };

  try {
    for await (const m of messages) {
      if (failure) break;
      received++;
      receivedSeq = m.seq;
      // Buffered messages come out of the iterator on microtasks alone, which would hold back the
      // batch in flight (its BEGIN's answer, its statements) until this batch is fully received; let
      // I/O in now and then, so Postgres applies one batch while the next is decoded.
      if (inFlight && received % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
      try {
        batch.push({ seq: m.seq, event: decodeEvent(m.data) });
      } catch (err) {
        // Projections never reject an event: an undecodable one is logged and skipped.
        log.error({ err, seq: m.seq }, 'skipping undecodable event');
      }
      const reachedStop = o.stopAtSeq !== undefined && m.seq >= o.stopAtSeq;
      const full = received >= batchSize;
      if (!full && m.info.pending > 0 && !reachedStop) continue;
      flushWanted = true;
      if (!inFlight) start();
      // A full batch waits for the one in flight (whose commit starts it): at most two in memory.
      else if (full) await inFlight;
      if (reachedStop) {
        await drain();
        if (failure) break;
        return true;
      }
      if (o.signal.aborted) break;
    }
    await drain();
  } finally {
    o.signal.removeEventListener('abort', stop);
    messages.stop();
    // Never leave a transaction running behind the caller's back (e.g. the leader lock is released next);
    // what was received and not started is read again from the checkpoint next time.
    flushWanted = false;
    await drain();
  }
  // (set by the batch callbacks: narrowed to null by the compiler, which does not follow them)
  const failed = failure as { err: unknown } | null;
  if (failed) throw failed.err;
  return false;
}

/**
 * The order in which `groupBatch` takes event types. Any order gives the same read models; following
 * an image's usual life makes the fewest groups (a whole batch of image lives in ~20 statements).
 */
const LIFECYCLE_RANK: Readonly<Record<EventType, number>> = {
  ImageStored: 0,
  ImageReprocessRequested: 1,
  ImageProcessingStarted: 2,
  VariantCreated: 3,
  ImageMetadataExtracted: 4,
  ImageProcessed: 5,
  ImageProcessingFailed: 6,
  BackupRequested: 7,
  BackupStarted: 8,
  BackupCompleted: 9,
  BackupFailed: 10,
  MoveRequested: 11,
  ImageMoved: 12,
  SourceFilesDeleted: 13,
  MoveFailed: 14,
  ImageDeleted: 15,
  BackupDeleted: 16,
  ImageFilesDeleted: 17,
  ImagePurged: 18,
};
const RANKS = Object.keys(LIFECYCLE_RANK).length;

/**
 * Orders a batch into groups that each hold events of one type about distinct images, so every read
 * model applies a group with one set-based statement. Only the order of each image's own events
 * matters (a read-model row belongs to one image; the usage counters are sums, which commute), so the
 * batch is taken as one queue per image: each round takes, from every image whose next event is of
 * the lowest-ranked type among all next events, that event. Applying the groups in order is therefore
 * the same as applying the events one by one in stream order.
 */
export function groupBatch(batch: readonly Applied[]): Applied[][] {
  const queues = new Map<string, { events: Applied[]; next: number }>();
  for (const a of batch) {
    const q = queues.get(a.event.image_id);
    if (q) q.events.push(a);
    else queues.set(a.event.image_id, { events: [a], next: 0 });
  }
  // ready[rank]: the images whose next event has that rank
  let ready: { events: Applied[]; next: number }[][] = Array.from({ length: RANKS }, () => []);
  const enqueue = (q: { events: Applied[]; next: number }) => {
    const head = q.events[q.next];
    if (head) ready[LIFECYCLE_RANK[head.event.type]]?.push(q);
  };
  for (const q of queues.values()) enqueue(q);
  const groups: Applied[][] = [];
  for (;;) {
    const rank = ready.findIndex((r) => r.length > 0);
    const taken = ready[rank];
    if (!taken) break;
    ready = ready.map((r, i) => (i === rank ? [] : r));
    const group: Applied[] = [];
    for (const q of taken) {
      const head = q.events[q.next++];
      if (head) group.push(head);
      enqueue(q);
    }
    groups.push(group);
  }
  return groups;
}

async function applyBatch(
  o: ProjectorOptions,
  schema: string,
  name: string,
  prevSeq: number,
  toSeq: number,
  batch: readonly Applied[],
  models: readonly ReadModel[],
): Promise<number> {
  if (toSeq <= prevSeq) return prevSeq;
  const fresh = batch.filter((a) => a.seq > prevSeq);
  await transaction(o.sql, async (tx) => {
    // Everything between BEGIN and COMMIT goes out in one write and runs in order (postgres.js pipelines
    // the statements of a transaction): the lock, the settings, the checkpoint, the changes. A wrong
    // checkpoint is only seen when the answers come back; throwing then rolls all of it back.
    const queries: Query[] = [];
    // A rebuild swaps schemas under the exclusive form of this lock: no batch straddles a switch-over.
    if (!o.exclusive) queries.push(tx`select pg_advisory_xact_lock_shared(${SWAP_LOCK})`);
    // A build into its own schema (rebuild, verify) need not wait for its commits to reach the disk: a
    // crash loses at most the last few batches *with* their checkpoint, and the build resumes from the
    // checkpoint that did survive. The live models keep full durability.
    queries.push(
      tx.unsafe(
        o.exclusive
          ? `set local search_path to "${schema}", public; set local synchronous_commit to off`
          : `set local search_path to "${schema}", public`,
      ),
    );
    // Checkpoint first: it takes the row lock, so a concurrent applier waits and then sees it moved.
    // Prepared (postgres.js prepares only tagged templates by default): an unprepared statement with
    // parameters is described first, and nothing behind it is sent until that answer is back, which
    // stalled every batch's pipeline (a 1M-event rebuild: 17–20k events/s with it, 25–26k without).
    const moved = tx.unsafe<postgres.Row[]>(
      `update "${schema}".projection_checkpoint set last_seq = $1, updated_at = now() where name = $2 and last_seq = $3`,
      [toSeq, name, prevSeq],
      { prepare: true },
    );
    queries.push(moved);
    for (const group of groupBatch(fresh)) {
      const type = group[0]?.event.type;
      if (type) queries.push(...applyGroup(tx, type, group, models));
    }
    // The API's read caches drop these images when (and only if) this transaction commits.
    const touched = fresh.map((a) => a.event.image_id);
    if (schema === READ_MODEL_SCHEMA && touched.length > 0)
      queries.push(notifyImagesChanged(tx, o.names, imagePayloads(toSeq, touched)));
    await Promise.all(queries);
    if ((await moved).count !== 1) throw new CheckpointMoved(`checkpoint ${name} is no longer at ${prevSeq}`);
  });
  return toSeq;
}

/** A checkpoint of `schema` as it stands (a read only: 0 when there is no row yet). */
export async function checkpointSeq(sql: Sql, schema = 'rm', name = 'main'): Promise<number> {
  const rows = await sql.unsafe<{ last_seq: number }[]>(
    `select last_seq from "${schema}".projection_checkpoint where name = $1`,
    [name],
    { prepare: true }, // one round trip, not a describe first (see the checkpoint update in applyBatch)
  );
  return Number(rows[0]?.last_seq ?? 0);
}

/** Waits until the checkpoint reaches `seq` (tests, `--wait` flags). */
export async function waitForCheckpoint(
  sql: Sql,
  seq: number,
  timeoutMs = 30_000,
  schema = 'rm',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await checkpointSeq(sql, schema)) >= seq) return;
    if (Date.now() > deadline) throw new Error(`projector did not reach seq ${seq} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
