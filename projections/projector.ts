// The projection engine: reads the event stream in order and applies each event to the read models in
// one transaction together with its checkpoint (the last applied stream sequence). A crash at any point
// neither loses nor double-applies an event. Many events per transaction, pipelined, for speed.
//
// Only one projector applies at a time: a Postgres advisory lock elects the leader (a standby takes over
// when the leader's session dies), and every batch additionally moves the checkpoint with a
// compare-and-set, so even two leaders could never apply the same event twice.
import { DeliverPolicy, type JetStreamClient } from '@nats-io/jetstream';
import { decodeEvent } from '../streams/events/codec.js';
import type { Names } from '../streams/subjects.js';
import type { Sql } from '../shared/db.js';
import type { Logger } from '../shared/logger.js';
import { errorMessage } from '../shared/errors.js';
import { evolveAll } from './read-models/index.js';
import type { Evolve, Query } from './read-models/types.js';

const LEADER_LOCK = 727_100;
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
  evolve?: Evolve;
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
  const rows = await sql.unsafe<{ last_seq: number }[]>(
    `select last_seq from "${schema}".projection_checkpoint where name = $1`,
    [name],
  );
  return Number(rows[0]?.last_seq ?? 0);
}

export async function runProjector(o: ProjectorOptions): Promise<void> {
  const schema = o.schema ?? 'rm';
  const name = o.checkpointName ?? 'main';
  const state = o.state ?? newProjectorState();
  const evolve = o.evolve ?? evolveAll;
  const batchSize = o.batchSize ?? 1000;
  const log = o.log.child({ component: 'projector', schema });

  while (!o.signal.aborted) {
    let lockConn: Awaited<ReturnType<Sql['reserve']>> | null = null;
    try {
      if (!o.exclusive) {
        lockConn = await o.sql.reserve();
        state.connected = true;
        const [row] = await lockConn`select pg_try_advisory_lock(${LEADER_LOCK}) as ok`;
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
      const done = await follow(o, schema, name, state, evolve, batchSize, log);
      if (done) return;
    } catch (err) {
      state.lastError = errorMessage(err);
      state.connected = !/connect|ECONNREFUSED|terminat/i.test(state.lastError);
      if (!(err instanceof CheckpointMoved)) log.warn({ err }, 'projector interrupted; retrying');
      await sleep(1000, o.signal);
    } finally {
      if (lockConn) {
        await lockConn`select pg_advisory_unlock(${LEADER_LOCK})`.catch(() => undefined);
        lockConn.release();
      }
      state.leader = false;
    }
  }
}

/** Applies events from the checkpoint on; returns true when stopAtSeq was reached. */
async function follow(
  o: ProjectorOptions,
  schema: string,
  name: string,
  state: ProjectorState,
  evolve: Evolve,
  batchSize: number,
  log: Logger,
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
  let batch: { seq: number; data: Uint8Array }[] = [];
  try {
    for await (const m of messages) {
      batch.push({ seq: m.seq, data: m.data });
      const reachedStop = o.stopAtSeq !== undefined && m.seq >= o.stopAtSeq;
      if (batch.length < batchSize && m.info.pending > 0 && !reachedStop) continue;
      lastSeq = await applyBatch(o, schema, name, lastSeq, batch, evolve, log);
      state.lastSeq = lastSeq;
      state.appliedEvents += batch.length;
      o.onBatch?.(lastSeq, batch.length);
      batch = [];
      if (reachedStop) return true;
      if (o.signal.aborted) break;
    }
  } finally {
    o.signal.removeEventListener('abort', stop);
    messages.stop();
  }
  return false;
}

async function applyBatch(
  o: ProjectorOptions,
  schema: string,
  name: string,
  prevSeq: number,
  batch: { seq: number; data: Uint8Array }[],
  evolve: Evolve,
  log: Logger,
): Promise<number> {
  const last = batch[batch.length - 1];
  if (!last) return prevSeq;
  await o.sql.begin(async (tx) => {
    // A rebuild swaps schemas under the exclusive form of this lock: no batch straddles a switch-over.
    if (!o.exclusive) await tx`select pg_advisory_xact_lock_shared(${SWAP_LOCK})`;
    await tx.unsafe(`set local search_path to "${schema}", public`);
    // Checkpoint first: it takes the row lock, so a concurrent applier waits and then sees it moved.
    const moved = await tx.unsafe(
      `update "${schema}".projection_checkpoint set last_seq = $1, updated_at = now() where name = $2 and last_seq = $3`,
      [last.seq, name, prevSeq],
    );
    if (moved.count !== 1) throw new CheckpointMoved(`checkpoint ${name} is no longer at ${prevSeq}`);
    const queries: Query[] = [];
    for (const m of batch) {
      if (m.seq <= prevSeq) continue;
      try {
        queries.push(...evolve(tx, decodeEvent(m.data), m.seq));
      } catch (err) {
        // Projections never reject an event: an undecodable one is logged and skipped.
        log.error({ err, seq: m.seq }, 'skipping undecodable event');
      }
    }
    // Pipelined: postgres.js sends them back to back on the transaction's connection.
    await Promise.all(queries);
  });
  return last.seq;
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
    const rows = await sql.unsafe<{ last_seq: number }[]>(
      `select last_seq from "${schema}".projection_checkpoint where name = 'main'`,
    );
    if (Number(rows[0]?.last_seq ?? 0) >= seq) return;
    if (Date.now() > deadline) throw new Error(`projector did not reach seq ${seq} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
