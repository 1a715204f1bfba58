// The variant worker: for each ImageStored (or ImageReprocessRequested) of this node's pools, decode the
// original once, derive every entitled output, extract metadata, and report it all as events. Output
// paths and event ids are deterministic, so a redelivery rewrites the same files and republishes
// duplicates the stream drops (and the projections ignore).
import { deterministicId, makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import { ack, retry, type Delivery, type Handler, type Outcome } from '../../shared/consumer.js';
import { errorMessage } from '../../shared/errors.js';
import { planOf } from '../../shared/plans.js';
import type { Pool } from '../../shared/pools.js';
import { getUser } from '../../shared/users.js';
import { CONSUMERS } from '../../streams/definitions.js';
import { observeProcessing } from '../../shared/metrics.js';
import type { Ctx } from '../context.js';
import { handOnIfMoved } from '../routing.js';
import {
  contentTypeOf,
  isTransientStoreError,
  poolStore,
  type LocalCopy,
  type OutputStage,
} from '../storage/pool-store.js';
import { detectAvifEngines, probeImage, renderVariants } from './media.js';
import { extractMetadata } from './metadata.js';
import { entitlementsFor, planVariants } from './plan.js';

interface Job {
  imageId: string;
  userId: string;
  poolId: string;
  storedPath: string;
  /** recorded size and SHA-256 of the original: a copy fetched from S3 is checked against them */
  size: number;
  sha256: string;
  cause: string;
  correlationId: string | null;
}

/** Errors of the machine (disk, descriptors, network), not of the image: worth another delivery. */
const TRANSIENT_CODES = new Set([
  'ENOSPC',
  'EIO',
  'EMFILE',
  'ENFILE',
  'EAGAIN',
  'EBUSY',
  'ECONNRESET',
  'ETIMEDOUT',
  'ECONNREFUSED',
]);

export function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
  const name = err instanceof Error ? err.name : '';
  // A publish that timed out or hit a disconnected NATS: the work itself was fine.
  return (
    /Timeout|NoResponders|Connection|Draining|Closed/i.test(name) ||
    /TIMEOUT|no responders|disconnect/i.test(errorMessage(err))
  );
}

async function jobFor(ctx: Ctx, event: AnyEvent): Promise<Job | null> {
  switch (event.type) {
    case 'ImageStored':
      return {
        imageId: event.image_id,
        userId: event.data.user_id,
        poolId: event.pool_id ?? '',
        storedPath: event.data.stored_path,
        size: event.data.size,
        sha256: event.data.sha256,
        cause: event.id,
        correlationId: event.correlation_id,
      };
    case 'ImageReprocessRequested': {
      const [row] = await ctx.sql<
        {
          user_id: string;
          storage_pool_id: string;
          node_id: string;
          stored_path: string;
          size: number;
          sha256: string;
          deleted_at: Date | null;
        }[]
      >`
        select user_id, storage_pool_id, node_id, stored_path, size, sha256, deleted_at
        from images where id = ${event.image_id}`;
      if (!row || row.deleted_at) return null;
      if ((await handOnIfMoved(ctx, event, row.node_id)) !== null) return null;
      return {
        imageId: event.image_id,
        userId: row.user_id,
        poolId: row.storage_pool_id,
        storedPath: row.stored_path,
        size: Number(row.size),
        sha256: row.sha256,
        cause: event.id,
        correlationId: event.correlation_id,
      };
    }
    default:
      return null;
  }
}

let enginesOnce: Promise<{ ffmpeg: boolean }> | null = null;

export function variantHandler(ctx: Ctx, pools: () => Pool[]): Handler {
  enginesOnce ??= detectAvifEngines().then((e) => {
    if (!e.ffmpeg) ctx.log.warn('ffmpeg with libsvtav1 not found: AVIF is encoded with sharp');
    return e;
  });
  const maxDeliver = CONSUMERS.processor.maxDeliver;

  return async (event: AnyEvent, d: Delivery): Promise<Outcome> => {
    const job = await jobFor(ctx, event);
    if (!job) return ack;
    const pool = pools().find((p) => p.id === job.poolId);
    // Local pools are read in place; S3 pools through bounded temp files (see ../storage/pool-store.ts).
    const store = pool ? poolStore(pool, ctx.config) : null;
    if (!pool || !store) return retry(30_000, `pool ${job.poolId} is not known on this node`);
    const [gone] = await ctx.sql<
      { deleted_at: Date | null }[]
    >`select deleted_at from images where id = ${job.imageId}`;
    if (gone?.deleted_at) return ack; // deleted meanwhile: nothing to make

    const base = {
      image_id: job.imageId,
      node_id: pool.node_id,
      pool_id: pool.id,
      causation_id: job.cause,
      correlation_id: job.correlationId,
    };
    const id = (...parts: (string | number)[]) => deterministicId(job.cause, d.deliveryCount, ...parts);
    const started = Date.now();
    let original: LocalCopy | null = null;
    let stage: OutputStage | null = null;
    let metadataRead: Promise<unknown> | null = null;
    try {
      const [, settings, user, engines] = await Promise.all([
        ctx.pub.publish(
          makeEvent('ImageProcessingStarted', {
            ...base,
            id: id('started'),
            data: { attempt: d.deliveryCount },
          }),
        ),
        ctx.settings.all(),
        getUser(ctx.sql, job.userId),
        enginesOnce,
      ]);
      // Never more than the plan allows (or the recorded size, for a file stored before a downgrade).
      original = await store.fetchToTemp(job.storedPath, {
        maxBytes: Math.max(planOf(user?.plan ?? 'free').maxFileBytes, job.size),
        size: job.size,
        sha256: job.sha256,
      });
      const src = original.path;
      // EXIF is read on the main thread while libvips renders on its own threads.
      const metadataP = extractMetadata(src);
      metadataRead = metadataP.catch(() => undefined);
      stage = await store.stageOutputs();
      const out = stage;
      const probe = await probeImage(src, { pixelLimit: ctx.config.maxImagePixels });
      const ent = entitlementsFor(settings, user?.plan ?? 'free', user?.prefs ?? {});
      const datePath = /^original\/(\d{4}\/\d{2}\/\d{2})\//.exec(job.storedPath)?.[1] ?? '1970/01/01';
      // The full-size AVIF is capped at avif_max_megapixels: the AV1 encoder's memory grows ~19 MiB per
      // megapixel (see plan.ts); each VariantCreated below carries the size actually rendered.
      const specs = planVariants(
        { imageId: job.imageId, datePath, format: probe.format, width: probe.width, height: probe.height },
        ent,
        { avifMaxPixels: settings.avif_max_megapixels * 1e6 },
      );
      const engine = settings.avif_engine === 'ffmpeg' && engines?.ffmpeg ? 'ffmpeg' : 'sharp';
      // renderVariants reports each written spec in order: time each output (the first includes the decode).
      let done = 0;
      let mark = Date.now();
      const rendered = await renderVariants(src, probe, specs, (rel) => out.toAbs(rel), {
        avifEngine: engine,
        pixelLimit: ctx.config.maxImagePixels,
        onProgress: () => {
          observeProcessing(specs[done++]?.variantType ?? 'unknown', Date.now() - mark);
          mark = Date.now();
          d.working();
        },
      });
      d.working();
      // Into the pool (S3: uploaded with Content-Type and immutable caching; local: already in place).
      for (const r of rendered) {
        await out.commit(r.spec.relPath, {
          contentType: contentTypeOf(r.spec.relPath),
          sha256: r.sha256,
          onProgress: () => d.working(),
        });
        d.working();
      }
      const metadata = await metadataP;
      observeProcessing('metadata', Date.now() - mark);
      // Stable ids per output (not per delivery): a redelivery's duplicates are dropped by the stream.
      const stable = (...parts: string[]) => deterministicId(job.cause, ...parts);
      // The results are published pipelined (their order among themselves does not matter); the
      // ImageProcessed that closes them only once every one of them is stored.
      await Promise.all([
        ...rendered.map((r) =>
          ctx.pub.publish(
            makeEvent('VariantCreated', {
              ...base,
              id: stable('variant', r.spec.variantType),
              data: {
                variant_type: r.spec.variantType,
                format: r.spec.format,
                size_name: r.spec.size,
                width: r.width,
                height: r.height,
                bytes: r.bytes,
                path: r.spec.relPath,
                sha256: r.sha256,
              },
            }),
          ),
        ),
        ctx.pub.publish(
          makeEvent('ImageMetadataExtracted', {
            ...base,
            id: stable('metadata'),
            data: {
              make: metadata.make,
              model: metadata.model,
              lens: metadata.lens,
              taken_at: metadata.takenAt,
              iso: metadata.iso,
              f_number: metadata.fNumber,
              exposure_time: metadata.exposureTime,
              focal_length: metadata.focalLength,
              orientation: metadata.orientation,
              gps_latitude: metadata.gps?.latitude ?? null,
              gps_longitude: metadata.gps?.longitude ?? null,
              gps_altitude: metadata.gps?.altitude ?? null,
              exif: metadata.exif,
            },
          }),
        ),
      ]);
      await ctx.pub.publish(
        makeEvent('ImageProcessed', {
          ...base,
          id: stable('processed'),
          data: {
            width: probe.width,
            height: probe.height,
            variant_count: rendered.length,
            duration_ms: Date.now() - started,
          },
        }),
      );
      observeProcessing('image', Date.now() - started);
      ctx.log.info(
        { imageId: job.imageId, variants: rendered.length, ms: Date.now() - started },
        'image processed',
      );
      return ack;
    } catch (err) {
      const last = maxDeliver > 0 && d.deliveryCount >= maxDeliver;
      if ((isTransient(err) || isTransientStoreError(err)) && !last)
        return retry(Math.min(60_000, 2_000 * 2 ** d.deliveryCount), errorMessage(err));
      // Expected failures become events: the image ends `failed` with a reason, the consumer moves on.
      const reason = errorMessage(err).slice(0, 500);
      try {
        await ctx.pub.publish(
          makeEvent('ImageProcessingFailed', {
            ...base,
            id: id('failed'),
            data: { reason, attempt: d.deliveryCount },
          }),
        );
      } catch (pubErr) {
        return retry(5_000, `could not record failure: ${errorMessage(pubErr)}`);
      }
      ctx.log.warn({ imageId: job.imageId, reason }, 'image processing failed');
      return ack;
    } finally {
      // Temp copies and staged outputs of S3 pools never outlive the job (nor the EXIF read of one).
      await metadataRead;
      await original?.release().catch(() => undefined);
      await stage?.dispose().catch(() => undefined);
    }
  };
}
