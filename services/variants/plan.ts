// The variant plan: which derived files an image gets and where they live.
// Pure: no I/O, no clock, no sharp. The worker feeds it the probe result and the
// settings/plan/prefs it loaded; media.ts renders whatever list this returns.
import { PLANS } from '../../shared/plans.js';
import type { PlanName } from '../../shared/plans.js';

export type SourceFormat = 'jpeg' | 'png' | 'gif' | 'webp' | 'avif' | 'bmp';
export type OutputFormat = 'jpeg' | 'png' | 'gif' | 'webp' | 'avif';
export type SizeName = 'full' | 'small' | 'medium';
export type ThumbnailSize = Exclude<SizeName, 'full'>;

export interface VariantSpec {
  /** 'webp' | 'avif' for full size, `${size}_${format}` for thumbnails, e.g. 'small_webp', 'medium_jpeg' */
  variantType: string;
  size: SizeName;
  format: OutputFormat;
  /** target width (never enlarged, height by aspect ratio); null = the original's size. Set for
   * thumbnails, and for a full-size AVIF capped by `avifMaxPixels` (see planVariants). */
  maxWidth: number | null;
  /** relative to the pool base path, e.g. 'variants/2024/05/17/<uuid>_small.jpg' */
  relPath: string;
}

export interface ThumbnailToggles {
  thumbnail_original: boolean;
  thumbnail_webp: boolean;
  thumbnail_avif: boolean;
}

export interface FormatPrefs {
  webp?: boolean;
  avif?: boolean;
}

export interface Entitlements {
  original: boolean;
  webp: boolean;
  avif: boolean;
}

export interface PlanInput {
  imageId: string;
  /** 'YYYY/MM/DD': the date part of the original's stored path, so a redelivery plans the same paths */
  datePath: string;
  format: SourceFormat;
  /** dimensions after EXIF auto-rotation */
  width: number;
  height: number;
}

/** Operator limits on what the plan makes (from the admin settings; passed in, so the plan stays pure). */
export interface PlanLimits {
  /** Pixel budget of the full-size AVIF: a larger image gets it downscaled to fit (aspect kept).
   * Absent or <= 0: no cap. The worker passes `avif_max_megapixels` (shared/settings.ts). */
  avifMaxPixels?: number;
}

/** Thumbnail widths in px. Height follows the aspect ratio; smaller images keep their size. */
export const THUMBNAIL_WIDTHS: Readonly<Record<ThumbnailSize, number>> = Object.freeze({
  small: 200,
  medium: 500,
});

/** A full-size AVIF is made only for images that do not fit in this square (AVIF's container overhead
 * and the encoder's start-up cost outweigh any saving on icons; SVT-AV1 also rejects < 64 px). */
export const AVIF_MIN_EDGE = 64;

export const EXTENSIONS: Readonly<Record<OutputFormat, string>> = Object.freeze({
  jpeg: 'jpg',
  png: 'png',
  gif: 'gif',
  webp: 'webp',
  avif: 'avif',
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DATE_PATH = /^\d{4}\/(0[1-9]|1[0-2])\/(0[1-9]|[12]\d|3[01])$/;

/**
 * A format is made only when all three layers allow it: the operator's global toggle, the user's plan
 * and the user's own preference (which defaults to on where the plan allows it). The original-format
 * thumbnails are in every plan and have no user preference, so only the global toggle turns them off.
 */
export function entitlementsFor(toggles: ThumbnailToggles, plan: PlanName, prefs: FormatPrefs): Entitlements {
  const formats = PLANS[plan].formats;
  return {
    original: toggles.thumbnail_original && formats.original,
    webp: toggles.thumbnail_webp && formats.webp && (prefs.webp ?? true),
    avif: toggles.thumbnail_avif && formats.avif && (prefs.avif ?? true),
  };
}

/** Output dimensions for a target width: never enlarged, height by aspect ratio (at least 1 px). */
export function outputSize(
  maxWidth: number | null,
  width: number,
  height: number,
): { width: number; height: number } {
  if (maxWidth === null || width <= maxWidth) return { width, height };
  return { width: maxWidth, height: Math.max(1, Math.round((height * maxWidth) / width)) };
}

/** The largest width whose outputSize() stays within `maxPixels` (aspect kept, never enlarged, >= 1). */
export function widthWithin(maxPixels: number, width: number, height: number): number {
  if (width * height <= maxPixels) return width;
  const fits = (w: number) => {
    const size = outputSize(w, width, height);
    return size.width * size.height <= maxPixels;
  };
  // outputSize rounds the height, so the exact answer can be a few columns either side of the estimate
  let w = Math.max(1, Math.min(width, Math.floor(width * Math.sqrt(maxPixels / (width * height)))));
  while (w < width && fits(w + 1)) w++;
  while (w > 1 && !fits(w)) w--;
  return w;
}

/** The format of the "original format" thumbnails: the source's own, except BMP, which browsers
 * handle poorly and which compresses badly, becomes PNG (lossless, like BMP). */
export function originalThumbnailFormat(format: SourceFormat): OutputFormat {
  switch (format) {
    case 'bmp':
      return 'png';
    case 'jpeg':
    case 'png':
    case 'gif':
    case 'webp':
    case 'avif':
      return format;
    default: {
      const unreachable: never = format;
      throw new Error(`unknown source format ${String(unreachable)}`);
    }
  }
}

/**
 * The ordered variant list for one image: thumbnails first (small, then medium; cheap, and what a
 * gallery needs first), then the full-size formats (the slow AVIF last).
 *
 * Rules:
 * - GIF gets thumbnails only (a full-size lossy re-encode of an animation is rarely smaller).
 * - The full size is never re-encoded into the source's own format (AVIF → no full AVIF, WebP → no
 *   full WebP): the original already is that file, a re-encode would only lose quality.
 * - Full-size AVIF only when the image does not fit in AVIF_MIN_EDGE × AVIF_MIN_EDGE.
 * - The full-size AVIF is capped at `limits.avifMaxPixels`: above it the AVIF is downscaled to fit
 *   (still size 'full', type 'avif'; its real width and height are reported with the rendered
 *   variant). The AV1 encoder (sharp → libheif → libaom) needs ~19 MiB per megapixel whatever the
 *   effort or thread count, so an uncapped 50 MP AVIF alone peaks at ~1.2 GiB (bench/memory.ts).
 *   The original and the full-size WebP keep the full size.
 * - Where the original format equals an entitled format (WebP or AVIF input), the thumbnail is made
 *   once: variant types are keyed by size and format, so there is never a duplicate path.
 */
export function planVariants(input: PlanInput, ent: Entitlements, limits: PlanLimits = {}): VariantSpec[] {
  if (!UUID.test(input.imageId))
    throw new RangeError(`imageId must be a UUID, got ${JSON.stringify(input.imageId)}`);
  if (!DATE_PATH.test(input.datePath)) {
    throw new RangeError(`datePath must be YYYY/MM/DD, got ${JSON.stringify(input.datePath)}`);
  }
  if (!(input.width > 0 && input.height > 0)) {
    throw new RangeError(`image dimensions must be positive, got ${input.width}x${input.height}`);
  }
  const base = `variants/${input.datePath}/${input.imageId}`;

  const thumbFormats: OutputFormat[] = [];
  const addThumbFormat = (f: OutputFormat): void => {
    if (!thumbFormats.includes(f)) thumbFormats.push(f);
  };
  if (ent.original) addThumbFormat(originalThumbnailFormat(input.format));
  if (ent.webp) addThumbFormat('webp');
  if (ent.avif) addThumbFormat('avif');

  const specs: VariantSpec[] = [];
  for (const size of ['small', 'medium'] as const) {
    for (const format of thumbFormats) {
      specs.push({
        variantType: `${size}_${format}`,
        size,
        format,
        maxWidth: THUMBNAIL_WIDTHS[size],
        relPath: `${base}_${size}.${EXTENSIONS[format]}`,
      });
    }
  }

  if (input.format !== 'gif') {
    if (ent.webp && input.format !== 'webp') {
      specs.push({
        variantType: 'webp',
        size: 'full',
        format: 'webp',
        maxWidth: null,
        relPath: `${base}.webp`,
      });
    }
    const bigEnough = input.width > AVIF_MIN_EDGE || input.height > AVIF_MIN_EDGE;
    if (ent.avif && input.format !== 'avif' && bigEnough) {
      const budget = limits.avifMaxPixels ?? 0;
      const capped = budget > 0 && input.width * input.height > budget;
      specs.push({
        variantType: 'avif',
        size: 'full',
        format: 'avif',
        maxWidth: capped ? widthWithin(budget, input.width, input.height) : null,
        relPath: `${base}.avif`,
      });
    }
  }
  return specs;
}
