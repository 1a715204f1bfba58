// "The variant set alone": what the variant worker does with the pixels of one image, without the
// stack around it (no upload, no event store, no projection). The baselines of bench/pipeline.ts and
// bench/throughput.ts and the 50 MP memory check use it, so they measure the same work the worker does:
// the same probe (with the configured pixel limit), the same plan (premium_max with the default
// toggles and the default full-size AVIF cap), the same AVIF engine setting and the same sharp concurrency (this process does not call
// configureMedia, and neither does the worker).
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { SETTING_DEFAULTS } from '../shared/settings.js';
import {
  probeImage,
  renderVariants,
  type AvifEngine,
  type RenderedVariant,
} from '../services/variants/media.js';
import { entitlementsFor, planVariants, type VariantSpec } from '../services/variants/plan.js';
import type { PlanName } from '../shared/plans.js';

/** The stack's default MAX_IMAGE_PIXELS (shared/config.ts). */
export const PIXEL_LIMIT = 100_000_000;

export interface VariantSetOptions {
  plan?: PlanName;
  avifEngine?: AvifEngine;
}

export function specsFor(
  probe: { format: Parameters<typeof planVariants>[0]['format']; width: number; height: number },
  imageId: string,
  plan: PlanName = 'premium_max',
): VariantSpec[] {
  return planVariants(
    { imageId, datePath: '2026/01/01', format: probe.format, width: probe.width, height: probe.height },
    entitlementsFor(SETTING_DEFAULTS, plan, {}),
    { avifMaxPixels: SETTING_DEFAULTS.avif_max_megapixels * 1e6 },
  );
}

/** Probe + plan + render every variant of `src` into `outDir` (fsync'd atomic writes, as in a pool). */
export async function renderVariantSet(
  src: string,
  outDir: string,
  opts: VariantSetOptions = {},
): Promise<RenderedVariant[]> {
  const probe = await probeImage(src, { pixelLimit: PIXEL_LIMIT });
  const specs = specsFor(probe, randomUUID(), opts.plan);
  await mkdir(outDir, { recursive: true });
  return renderVariants(src, probe, specs, (rel) => path.join(outDir, rel), {
    avifEngine: opts.avifEngine ?? SETTING_DEFAULTS.avif_engine,
    pixelLimit: PIXEL_LIMIT,
  });
}
