import type { EventType } from '../../streams/events/catalog.js';
import { backups } from './backups.js';
import { images } from './images.js';
import { metadata } from './metadata.js';
import type { Applied, Query, ReadModel, Tx } from './types.js';
import { variants } from './variants.js';

/** Read models in application order (variants after images: a variant needs its image row). */
export const READ_MODELS: Readonly<Record<string, ReadModel>> = Object.freeze({
  images,
  variants,
  metadata,
  backups,
});

/** The statements of every read model for one group (one event type, each event about another image). */
export function applyGroup<T extends EventType>(
  tx: Tx,
  type: T,
  group: readonly Applied<T>[],
  models: readonly ReadModel[] = Object.values(READ_MODELS),
): Query[] {
  const out: Query[] = [];
  for (const m of models) {
    const step = m[type];
    if (step) out.push(...step(tx, group));
  }
  return out;
}
