import { evolveBackups } from './backups.js';
import { evolveImages } from './images.js';
import { evolveMetadata } from './metadata.js';
import type { Evolve } from './types.js';
import { evolveVariants } from './variants.js';

/** Read models in application order (variants after images: a variant needs its image row). */
export const READ_MODELS: Readonly<Record<string, Evolve>> = Object.freeze({
  images: evolveImages,
  variants: evolveVariants,
  metadata: evolveMetadata,
  backups: evolveBackups,
});

export const evolveAll: Evolve = (tx, event, seq) =>
  Object.values(READ_MODELS).flatMap((f) => f(tx, event, seq));
