// Admin settings (DB-backed, seed names). Read through a short cache: a change takes effect on every
// node within SETTINGS_TTL_MS without a restart.
import type { Sql } from './db.js';

export const SETTING_DEFAULTS = Object.freeze({
  image_upload_enabled: true,
  direct_upload_enabled: true,
  thumbnail_original: true,
  thumbnail_webp: true,
  thumbnail_avif: true,
  s3_backup_enabled: false,
  /** <= 0: back up right after upload; otherwise after this many minutes. */
  s3_backup_delay_minutes: 0,
  /** minutes between checks of delayed backups (delayed backups are driven by JetStream redelivery). */
  s3_backup_check_interval: 1,
  /** minutes between automatic re-queues of failed backups. */
  s3_retry_interval: 10,
  job_queue_worker_count: 2,
  api_rate_limit_per_minute: 600,
  upload_rate_limit_per_minute: 60,
  upload_user_rate_limit_per_minute: 120,
  replication_require_checksum: false,
  /** 'sharp' (libaom, effort 1) or 'ffmpeg' (SVT-AV1 preset 10): sharp is 3.4× faster at the same SSIM here (BENCHMARKS.md). */
  avif_engine: 'sharp' as 'ffmpeg' | 'sharp',
  /** Pixel budget (megapixels) of the full-size AVIF; larger images get it downscaled to fit, while
   * the original and the full-size WebP keep their size. 0 = no cap. The AV1 encoder needs ~19 MiB per
   * megapixel: with 24 the whole variant set of a 50 MP photo peaks near 820 MiB RSS instead of ~1.5 GiB
   * (bench/memory.ts), and 24 MP cameras still get a full-resolution AVIF. */
  avif_max_megapixels: 24,
});

export type Settings = { -readonly [K in keyof typeof SETTING_DEFAULTS]: (typeof SETTING_DEFAULTS)[K] };
export type SettingKey = keyof Settings;

export function isSettingKey(k: string): k is SettingKey {
  return Object.prototype.hasOwnProperty.call(SETTING_DEFAULTS, k);
}

/** Parses an operator-supplied string or JSON value into the setting's type; throws with a reason. */
export function parseSettingValue(key: SettingKey, raw: unknown): Settings[SettingKey] {
  const def = SETTING_DEFAULTS[key];
  let v: unknown = raw;
  if (typeof raw === 'string') {
    if (typeof def === 'boolean') {
      if (['true', '1', 'on', 'yes'].includes(raw.toLowerCase())) v = true;
      else if (['false', '0', 'off', 'no'].includes(raw.toLowerCase())) v = false;
    } else if (typeof def === 'number') v = Number(raw);
  }
  if (typeof def === 'boolean' && typeof v !== 'boolean') throw new Error(`${key} must be true or false`);
  if (typeof def === 'number' && (typeof v !== 'number' || !Number.isFinite(v)))
    throw new Error(`${key} must be a number`);
  if (key === 'job_queue_worker_count' && (typeof v !== 'number' || v < 1 || v > 64 || !Number.isInteger(v)))
    throw new Error('job_queue_worker_count must be an integer from 1 to 64');
  if (key === 'avif_max_megapixels' && (typeof v !== 'number' || v < 0 || (v > 0 && v < 1)))
    throw new Error('avif_max_megapixels must be 0 (no cap) or at least 1');
  if (key === 'avif_engine' && v !== 'ffmpeg' && v !== 'sharp')
    throw new Error("avif_engine must be 'ffmpeg' or 'sharp'");
  return v as Settings[SettingKey];
}

const SETTINGS_TTL_MS = 2_000;

export class SettingsStore {
  private cache: { at: number; value: Settings } | null = null;
  constructor(private readonly sql: Sql) {}

  async all(): Promise<Settings> {
    if (this.cache && Date.now() - this.cache.at < SETTINGS_TTL_MS) return this.cache.value;
    const rows = await this.sql<{ key: string; value: unknown }[]>`select key, value from settings`;
    const value: Settings = { ...SETTING_DEFAULTS };
    for (const r of rows) {
      if (!isSettingKey(r.key)) continue;
      try {
        (value as Record<SettingKey, unknown>)[r.key] = parseSettingValue(r.key, r.value);
      } catch {
        // A bad stored value falls back to the default rather than breaking every request.
      }
    }
    this.cache = { at: Date.now(), value: Object.freeze(value) };
    return value;
  }

  async set(key: SettingKey, raw: unknown): Promise<Settings[SettingKey]> {
    const value = parseSettingValue(key, raw);
    await this
      .sql`insert into settings (key, value, updated_at) values (${key}, ${this.sql.json(value as never)}, now())
                   on conflict (key) do update set value = excluded.value, updated_at = now()`;
    this.cache = null;
    return value;
  }
}
