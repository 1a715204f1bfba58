// Pure: the object key of an image's backup, `images/YYYY/MM/DD/<uuid>.<ext>` (date of the upload).
export function backupKey(imageId: string, storedPath: string, ext: string): string {
  const date = /^original\/(\d{4}\/\d{2}\/\d{2})\//.exec(storedPath)?.[1] ?? '1970/01/01';
  return `images/${date}/${imageId}.${ext}`;
}

/** Delay before attempt `attempt + 1` of one round (3 attempts per round, then `failed`). */
export const BACKUP_ATTEMPTS = 3;
export function backupRetryDelayMs(attempt: number): number {
  // 20 s, then 60 s: a 60 s S3 outage is ridden out within one round.
  return attempt <= 1 ? 20_000 : 60_000;
}
