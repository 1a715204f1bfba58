// Process-wide Prometheus metrics: one registry (not prom-client's global one, so nothing a library
// registers ends up in our scrape), default process metrics, and the counters and histograms that the
// request and worker code increments through the functions below. Values that are state rather than
// events (consumer lag, pool usage, backups by status) are read at scrape time in services/http/metrics.ts.
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const registry = new Registry();
collectDefaultMetrics({ register: registry });

/** Request durations; `route` is the route pattern (`/api/v1/images/:uuid`), never the raw URL. */
export const httpRequestDuration = new Histogram({
  name: 'pixelfox_http_request_duration_seconds',
  help: 'HTTP request duration by method, route pattern and status code',
  labelNames: ['method', 'route', 'status_code'] as const,
  // 5 ms (health, reads) up to 2 min (a large upload on a slow link).
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
  registers: [registry],
});

const uploads = new Counter({
  name: 'pixelfox_uploads_total',
  help: 'Uploads accepted by this storage node (stored: new image; duplicate: same bytes as an existing image)',
  labelNames: ['outcome'] as const,
  registers: [registry],
});

const uploadBytes = new Counter({
  name: 'pixelfox_upload_bytes_total',
  help: 'Bytes of accepted uploads',
  labelNames: ['outcome'] as const,
  registers: [registry],
});

const uploadRejections = new Counter({
  name: 'pixelfox_upload_rejections_total',
  help: 'Uploads refused, by error code (file_too_large, quota_exceeded, rate_limited, token_expired, ...)',
  labelNames: ['reason'] as const,
  registers: [registry],
});

const processingDuration = new Histogram({
  name: 'pixelfox_processing_duration_seconds',
  help: 'Time to produce one output of the variant worker, by output type (variant type, "metadata", "image" for the whole job)',
  labelNames: ['output'] as const,
  // A thumbnail of a small JPEG takes ~20 ms; AVIF of a 100 MP image takes minutes.
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
  registers: [registry],
});

export type UploadOutcome = 'stored' | 'duplicate';

/** An upload was accepted (call once per successful answer of POST /api/internal/upload). */
export function recordUpload(outcome: UploadOutcome, bytes: number): void {
  uploads.inc({ outcome });
  if (bytes > 0) uploadBytes.inc({ outcome }, bytes);
}

/** An upload was refused; `reason` is the stable error code of the answer (a bounded set). */
export function recordUploadRejection(reason: string): void {
  uploadRejections.inc({ reason: /^[a-z0-9_]{1,64}$/.test(reason) ? reason : 'other' });
}

/** One output of the processing pipeline took `ms` milliseconds. */
export function observeProcessing(output: string, ms: number): void {
  processingDuration.observe({ output }, Math.max(0, ms) / 1000);
}
