import type postgres from 'postgres';
import type { AnyEvent } from '../../streams/events/catalog.js';

export type Query = postgres.PendingQuery<postgres.Row[]>;
/**
 * A read model's evolve step: the SQL statements that apply one event. Statements only write (no reads
 * in JS), so a batch of events is pipelined over one connection inside one transaction. Each statement
 * is idempotent on its own (guards on row state), so an event stored twice changes nothing the second time.
 */
export type Evolve = (tx: postgres.TransactionSql, event: AnyEvent, seq: number) => Query[];
