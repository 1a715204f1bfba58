// Pure rules: plans, pool selection, settings parsing, configuration.
import t from 'tap';
import { loadConfig, ConfigError } from '../../shared/config.js';
import { PLANS, planOf } from '../../shared/plans.js';
import { selectPool, freeBytes, type Candidate, type Pool } from '../../shared/pools.js';
import { parseSettingValue, SETTING_DEFAULTS } from '../../shared/settings.js';
import { names } from '../../streams/subjects.js';
import { backupKey, backupRetryDelayMs } from '../../services/backup/key.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

t.test('plans', async (t) => {
  t.same([PLANS.free.maxFileBytes, PLANS.free.quotaBytes], [5 * MiB, 25 * GiB]);
  t.same([PLANS.premium.maxFileBytes, PLANS.premium.quotaBytes], [50 * MiB, 500 * GiB]);
  t.same([PLANS.premium_max.maxFileBytes, PLANS.premium_max.quotaBytes], [100 * MiB, 2000 * GiB]);
  t.same(PLANS.free.formats, { original: true, webp: false, avif: false });
  t.same(PLANS.premium.formats, { original: true, webp: true, avif: false });
  t.same(PLANS.premium_max.formats, { original: true, webp: true, avif: true });
  t.equal(planOf('nonsense').name, 'free', 'unknown plans get the least');
});

function pool(p: Partial<Pool>): Pool {
  return {
    id: p.name ?? 'x',
    name: 'x',
    storage_type: 'local',
    storage_tier: 'hot',
    priority: 100,
    base_path: '/p',
    public_base_url: 'http://x',
    upload_api_url: 'http://x/api/internal/upload',
    node_id: 'n',
    max_capacity_bytes: null,
    is_active: true,
    is_backup_target: false,
    s3_bucket: null,
    s3_region: null,
    s3_endpoint: null,
    s3_access_key: null,
    s3_secret_key: null,
    s3_force_path_style: true,
    s3_prefix: '',
    description: '',
    created_at: new Date(0),
    updated_at: new Date(0),
    ...p,
  };
}
const healthy = (id: string, free = 100 * GiB) => ({
  pool_id: id,
  node_id: 'n',
  healthy: true,
  reachable: true,
  free_bytes: free,
  used_bytes: 0,
  checked_at: '',
});

t.test('pool selection: healthy, room, hot before warm before any, priority, free space', async (t) => {
  const c = (p: Partial<Pool>, free?: number, used = 0, health = true): Candidate => ({
    pool: pool(p),
    health: health ? healthy(p.name ?? 'x', free) : null,
    usedBytes: used,
  });
  t.equal(
    selectPool(
      [c({ name: 'warm', storage_tier: 'warm', priority: 999 }), c({ name: 'hot', priority: 1 })],
      10,
    )?.name,
    'hot',
  );
  t.equal(
    selectPool([c({ name: 'cold', storage_tier: 'cold' }), c({ name: 'warm', storage_tier: 'warm' })], 10)
      ?.name,
    'warm',
  );
  t.equal(selectPool([c({ name: 'cold', storage_tier: 'cold' })], 10)?.name, 'cold', 'then any');
  t.equal(
    selectPool([c({ name: 'a', priority: 1 }), c({ name: 'b', priority: 5 })], 10)?.name,
    'b',
    'higher priority first',
  );
  t.equal(
    selectPool([c({ name: 'a' }, 10 * GiB), c({ name: 'b' }, 20 * GiB)], 10)?.name,
    'b',
    'ties by free space',
  );
  t.equal(selectPool([c({ name: 'a' }, 5)], 10), null, 'no room on disk');
  t.equal(
    selectPool([c({ name: 'a', max_capacity_bytes: 100 }, undefined, 95)], 10),
    null,
    'no room under capacity',
  );
  t.equal(freeBytes(c({ name: 'a', max_capacity_bytes: 100 }, 1000, 40)), 60);
  t.equal(selectPool([c({ name: 'a' }, undefined, 0, false)], 10), null, 'no health report: not selectable');
  t.equal(selectPool([c({ name: 'a', is_active: false })], 10), null, 'inactive');
  const unreachable: Candidate = {
    pool: pool({ name: 'u' }),
    health: { ...healthy('u'), reachable: false },
    usedBytes: 0,
  };
  t.equal(selectPool([unreachable], 10), null, 'unreachable');
});

t.test('settings parse strings and JSON values by the default type', async (t) => {
  t.equal(parseSettingValue('s3_backup_enabled', 'on'), true);
  t.equal(parseSettingValue('s3_backup_enabled', false), false);
  t.equal(parseSettingValue('s3_backup_delay_minutes', '1'), 1);
  t.throws(() => parseSettingValue('job_queue_worker_count', '0'));
  t.throws(() => parseSettingValue('thumbnail_avif', 'maybe'));
  t.throws(() => parseSettingValue('avif_engine', 'gpu'));
  t.equal(SETTING_DEFAULTS.image_upload_enabled, true);
});

t.test('config: defaults, one error listing every problem, secrets required for serve', async (t) => {
  const c = loadConfig({}, { requireSecrets: false });
  t.equal(c.appPort, 3000);
  t.equal(c.nodeId, 'local');
  t.equal(c.namespace, 'pixelfox');
  t.equal(c.publicDomain, 'http://127.0.0.1:3000');
  t.ok(Object.isFrozen(c));
  try {
    loadConfig({ APP_PORT: 'x', NODE_ID: 'a b', PUBLIC_DOMAIN: 'ftp://x' }, { requireSecrets: true });
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    for (const w of [
      'APP_PORT',
      'NODE_ID',
      'PUBLIC_DOMAIN',
      'UPLOAD_TOKEN_SECRET',
      'REPLICATION_SECRET',
      'ADMIN_TOKEN',
    ])
      t.match(problems, w);
  }
});

t.test('subjects', async (t) => {
  const n = names('pf');
  t.equal(n.eventSubject('ImageStored', 'node-a', 'img'), 'pf.ev.ImageStored.node-a.img');
  t.equal(n.typeFilter('ImageStored', 'node-a'), 'pf.ev.ImageStored.node-a.*');
  t.equal(n.imageFilter('img'), 'pf.ev.*.*.img');
  t.same(n.parseSubject('pf.ev.ImageStored.node-a.img'), {
    type: 'ImageStored',
    nodeId: 'node-a',
    imageId: 'img',
  });
  t.equal(n.parseSubject('other.ev.X.a.b'), null);
  t.throws(() => names('bad.ns'));
  t.throws(() => n.eventSubject('ImageStored', 'a.b', 'img'), 'node ids cannot inject subject tokens');
});

t.test('backup keys and retry delays', async (t) => {
  t.equal(backupKey('abc', 'original/2026/11/28/abc.jpg', 'jpg'), 'images/2026/11/28/abc.jpg');
  t.ok(backupRetryDelayMs(1) < backupRetryDelayMs(2));
});
