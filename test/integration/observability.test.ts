// GET /metrics on a real stack: Prometheus format, default process metrics, HTTP latency per route
// pattern, upload and processing metrics, and the state read at scrape time. The lag test uploads a
// burst while the node's worker is not running yet, sees the processor's pending count rise by it, then
// starts the worker (one image at a time) and watches the queue drain back to 0.
import t from 'tap';
import sharp from 'sharp';
import { SettingsStore } from '../../shared/settings.js';
import { makeUser, startInProcess, testEnv, uploadFile, waitFor, waitForStatus } from '../helpers/stack.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (samples only; comments skipped). */
function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] ?? ''] = l[2] ?? '';
    out.push({ name: m[1] ?? '', labels, value: Number(m[3]) });
  }
  return out;
}

function pick(samples: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
}

/** Sum of the matching samples; null when there is none. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | null {
  const found = pick(samples, name, labels);
  return found.length ? found.reduce((a, s) => a + s.value, 0) : null;
}

/** A distinct photo-sized JPEG (random noise: every call differs, and it is slow enough to encode). */
async function noiseJpeg(width: number, height: number): Promise<Buffer> {
  return sharp({
    create: {
      width,
      height,
      channels: 3,
      background: '#808080',
      noise: { type: 'gaussian', mean: 128, sigma: 40 },
    },
  })
    .jpeg({ quality: 85 })
    .toBuffer();
}

t.test('metrics', async (t) => {
  const env = await testEnv(t);
  // One image at a time, set before start so the workers begin with it: a burst must queue up.
  await new SettingsStore(env.sql()).set('job_queue_worker_count', 1);
  // API, storage node and projector; the worker of this node starts in the lag test below.
  const node = await startInProcess(env, { roles: ['api', 'storage', 'projector'] });
  t.teardown(() => node.close());
  const api = node.url;
  const user = await makeUser(env, 'premium_max');
  const scrape = async (): Promise<Sample[]> => {
    const r = await fetch(`${api}/metrics`);
    if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
    return parseMetrics(await r.text());
  };
  const processor = { kind: 'processor', node: node.config.nodeId };

  await t.test('format, default metrics, scrape-time state', async (t) => {
    const r = await fetch(`${api}/metrics`);
    t.equal(r.status, 200);
    t.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
    const text = await r.text();
    t.match(text, /# TYPE pixelfox_http_request_duration_seconds histogram/);
    t.match(text, /# TYPE pixelfox_processing_duration_seconds histogram/);
    t.match(text, /# TYPE pixelfox_backups gauge/);
    const s = parseMetrics(text);
    t.ok(value(s, 'process_cpu_user_seconds_total') !== null, 'default process metrics');
    t.ok(value(s, 'nodejs_eventloop_lag_seconds') !== null, 'event loop lag');
    for (const source of ['consumers', 'projector', 'backups', 'pools', 'pool_health', 'failed_jobs']) {
      t.equal(value(s, 'pixelfox_metrics_source_up', { source }), 1, `${source} readable`);
    }
    t.equal(value(s, 'pixelfox_consumer_pending_messages', processor), 0, 'processor idle');
    for (const kind of ['processor', 'reprocessor', 'backup-scheduler', 'backup', 'deleter', 'mover']) {
      // One for this node and one for `_any` (S3 pools, consumed by every worker node).
      for (const nodeId of [node.config.nodeId, '_any']) {
        t.equal(
          pick(s, 'pixelfox_consumer_ack_pending_messages', { kind, node: nodeId }).length,
          1,
          `${kind} consumer of ${nodeId} listed`,
        );
      }
    }
    const pool = pick(s, 'pixelfox_pool_used_bytes', { pool: 'default' })[0];
    t.ok(pool, 'default pool listed');
    t.equal(value(s, 'pixelfox_pool_healthy', { pool: 'default' }), 1, 'default pool healthy');
    t.equal(value(s, 'pixelfox_pool_active', { pool: 'default' }), 1);
    t.ok((value(s, 'pixelfox_pool_disk_free_bytes', { pool: 'default' }) ?? 0) > 0, 'disk free reported');
    t.equal(value(s, 'pixelfox_failed_jobs_open'), 0);
    t.ok(value(s, 'pixelfox_projector_lag_events') !== null, 'projector lag');
  });

  await t.test('queue lag rises during a burst and drains to 0', async (t) => {
    const images = await Promise.all(Array.from({ length: 10 }, () => noiseJpeg(1280, 960)));
    // The burst arrives while no worker runs (a node without the worker role), so the rise does not
    // depend on how fast this machine renders; then a worker starts and the queue drains.
    const results = await Promise.all(
      images.map((img, i) => uploadFile(api, user.apiKey, img, `burst-${i}.jpg`)),
    );
    t.same(
      results.map((r) => r.status),
      Array(10).fill(201),
      'all uploads stored',
    );
    // Readings are cached for 2 s: wait for one taken after the burst.
    const risen = await waitFor('the burst in the processor queue', async () => {
      const s = await scrape();
      return (value(s, 'pixelfox_consumer_pending_messages', processor) ?? 0) >= 10 ? s : null;
    });
    t.equal(
      value(risen, 'pixelfox_consumer_pending_messages', processor),
      10,
      'processor pending rose by the burst',
    );
    const worker = await startInProcess(env, { roles: ['worker'] });
    t.teardown(() => worker.close());

    const idle = (s: Sample[]) =>
      value(s, 'pixelfox_consumer_pending_messages', processor) === 0 &&
      value(s, 'pixelfox_consumer_ack_pending_messages', processor) === 0;
    const drained = await waitFor(
      'processor lag back to 0',
      async () => {
        const s = await scrape();
        return idle(s) ? s : null;
      },
      180_000,
    );
    t.equal(value(drained, 'pixelfox_consumer_redelivered_messages', processor), 0, 'nothing redelivered');
    for (const r of results) await waitForStatus(api, user.apiKey, String(r.body.image_uuid), ['completed']);
    const s = await waitFor('projector caught up', async () => {
      const x = await scrape();
      return value(x, 'pixelfox_projector_lag_events') === 0 ? x : null;
    });
    t.ok((value(s, 'pixelfox_stream_last_seq') ?? 0) > 10, 'stream head');
    t.equal(
      value(s, 'pixelfox_projector_checkpoint_seq'),
      value(s, 'pixelfox_stream_last_seq'),
      'checkpoint at head',
    );
    const bytes = results.reduce((a, r) => a + Number(r.body.size), 0);
    t.ok(
      (value(s, 'pixelfox_pool_used_bytes', { pool: 'default' }) ?? 0) >= bytes,
      'pool usage counts the originals',
    );
    t.ok((value(s, 'pixelfox_pool_files', { pool: 'default' }) ?? 0) >= 10, 'pool file count');
  });

  await t.test(
    'HTTP latency per route pattern, uploads and processing (instrumented code paths)',
    async (t) => {
      // A rejected upload: not an image.
      const bad = await uploadFile(
        api,
        user.apiKey,
        Buffer.from('just some text, not an image at all'),
        'notes.txt',
      );
      t.ok(bad.status >= 400 && bad.status < 500, `refused (${bad.status})`);
      const reason = String((bad.body.error as { code?: string } | undefined)?.code);
      t.equal((await fetch(`${api}/no/such/route`)).status, 404);
      const s = await scrape();

      const count = (labels: Record<string, string>) =>
        value(s, 'pixelfox_http_request_duration_seconds_count', labels) ?? 0;
      t.ok(
        count({ method: 'POST', route: '/api/v1/upload/sessions', status_code: '201' }) >= 10,
        'sessions by route pattern',
      );
      t.ok(
        count({ method: 'POST', route: '/api/internal/upload', status_code: '201' }) >= 10,
        'uploads by route pattern',
      );
      t.ok(
        count({ method: 'GET', route: '/api/v1/images/:uuid/status', status_code: '200' }) >= 10,
        'the pattern, not the URL',
      );
      t.ok(count({ method: 'GET', route: '/metrics', status_code: '200' }) >= 1, '/metrics itself');
      t.ok(count({ route: '(unmatched)', status_code: '404' }) >= 1, 'unknown URLs share one series');
      t.equal(
        pick(s, 'pixelfox_http_request_duration_seconds_count').filter((x) =>
          /[0-9a-f]{8}-[0-9a-f]{4}/.test(x.labels.route ?? ''),
        ).length,
        0,
        'no ids in route labels',
      );
      t.ok(
        (value(s, 'pixelfox_http_request_duration_seconds_bucket', {
          method: 'POST',
          route: '/api/internal/upload',
          status_code: '201',
          le: '+Inf',
        }) ?? 0) >= 10,
        'histogram buckets',
      );

      t.ok((value(s, 'pixelfox_uploads_total', { outcome: 'stored' }) ?? 0) >= 10, 'stored uploads counted');
      t.ok(
        (value(s, 'pixelfox_upload_bytes_total', { outcome: 'stored' }) ?? 0) > 10 * 100_000,
        'upload bytes counted',
      );
      t.ok(
        (value(s, 'pixelfox_upload_rejections_total', { reason }) ?? 0) >= 1,
        `rejection counted by reason (${reason})`,
      );
      t.ok(
        (value(s, 'pixelfox_processing_duration_seconds_count', { output: 'image' }) ?? 0) >= 10,
        'processing duration per image',
      );
      const outputs = new Set(
        pick(s, 'pixelfox_processing_duration_seconds_count').map((x) => x.labels.output),
      );
      t.ok(
        outputs.has('small_webp') || outputs.has('small_jpeg'),
        `processing duration per output type (${[...outputs].join(', ')})`,
      );
    },
  );
});
