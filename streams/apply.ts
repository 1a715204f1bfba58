// Idempotent apply: creates what is missing, updates what changed, never deletes streams or data.
import type { JetStreamManager } from '@nats-io/jetstream';
import {
  advisoryRecorderConfig,
  advisoryStreamConfig,
  CONSUMERS,
  consumerConfig,
  eventStreamConfig,
} from './definitions.js';
import { ANY_NODE, type Names } from './subjects.js';

export async function applyStream(
  jsm: JetStreamManager,
  n: Names,
  replicas: number,
): Promise<'created' | 'updated'> {
  const result = await upsertStream(jsm, eventStreamConfig(n, replicas));
  await upsertStream(jsm, advisoryStreamConfig(n, replicas));
  const rec = advisoryRecorderConfig(n);
  try {
    await jsm.consumers.info(n.advisoryStream, rec.durable_name);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    await jsm.consumers.add(n.advisoryStream, rec);
  }
  return result;
}

async function upsertStream(
  jsm: JetStreamManager,
  cfg: ReturnType<typeof eventStreamConfig>,
): Promise<'created' | 'updated'> {
  try {
    await jsm.streams.info(cfg.name);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    await jsm.streams.add(cfg);
    return 'created';
  }
  await jsm.streams.update(cfg.name, cfg);
  return 'updated';
}

export async function applyConsumers(
  jsm: JetStreamManager,
  n: Names,
  nodeIds: Iterable<string>,
): Promise<string[]> {
  const applied: string[] = [];
  // `_any` always: events of S3 pools carry it, and every worker node also consumes them.
  for (const nodeId of new Set([...nodeIds, ANY_NODE])) {
    for (const kind of Object.values(CONSUMERS)) {
      const cfg = consumerConfig(n, kind, nodeId);
      try {
        await jsm.consumers.info(n.stream, cfg.durable_name);
        await jsm.consumers.update(n.stream, cfg.durable_name, cfg);
      } catch (err) {
        if (!isNotFound(err)) throw err;
        await jsm.consumers.add(n.stream, cfg);
      }
      applied.push(cfg.durable_name);
    }
  }
  return applied;
}

function isNotFound(err: unknown): boolean {
  const msg = err instanceof Error ? err.message : String(err);
  return /not found/i.test(msg);
}
