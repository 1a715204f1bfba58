import type postgres from 'postgres';
import type { EventOf, EventType } from '../../streams/events/catalog.js';

export type Query = postgres.PendingQuery<postgres.Row[]>;
export type Tx = postgres.TransactionSql;

/** An event with its stream sequence. */
export interface Applied<T extends EventType = EventType> {
  readonly seq: number;
  readonly event: EventOf<T>;
}

/**
 * How a read model applies one event type: the SQL for a group of events of that type, each about a
 * different image (the projector groups a batch so; see `groupBatch` in ../projector.ts). One
 * set-based statement per group instead of one per event: the per-statement cost (client and server)
 * dominates a rebuild. Statements only write (no reads in JS), so a batch is pipelined over one
 * connection inside one transaction. Each statement is idempotent on its own (guards on row state), so
 * an event stored twice changes nothing the second time.
 */
export type Step<T extends EventType> = (tx: Tx, group: readonly Applied<T>[]) => Query[];

/**
 * A read model names every event type (`null`: it ignores that type), so a new event type does not
 * compile until each read model has decided what it means for it.
 */
export type ReadModel = { readonly [T in EventType]: Step<T> | null };

// JSON.stringify escapes a lone surrogate as `\udXXX`, which Postgres refuses to turn into text; a
// string parameter would have been sent as UTF-8 with U+FFFD instead. Do the same, so no event is
// ever refused for it (rare: only re-stringify when the cheap check finds one).
const LONE_SURROGATE = /\\ud[89a-f][0-9a-f]{2}/i;
const wellFormed = (_k: string, v: unknown) =>
  typeof v === 'string' ? (v as string & { toWellFormed(): string }).toWellFormed() : v;

/**
 * The group's rows as one `json` parameter, read in SQL with
 * `json_to_recordset(${rowsJson(rows)}::text::json) as x(col type, …)` (typed text, so postgres.js
 * sends the string as it is instead of JSON-encoding it again): one bound parameter however many rows.
 */
export function rowsJson(rows: readonly object[]): string {
  const s = JSON.stringify(rows);
  return LONE_SURROGATE.test(s) ? JSON.stringify(rows, wellFormed) : s;
}
