// The storage layer for local and NFS pools: the only code that touches pool directories. Every path
// goes through resolveInPool (nothing outside base_path), every write is temp file + fsync + rename
// (a crash never leaves a half-written file under its final name).
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, type WriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { assertNoSymlinkEscape, resolveInPool } from './paths.js';

/** Temp files of a pool live under its base path, so the final rename never crosses file systems. */
export const TMP_DIR = '.tmp';

/**
 * A new file (`wx`: never an existing one) as a write stream, opened before it is returned. A stream
 * from createWriteStream(path) opens its file in the background: when the pipeline it is in fails
 * first (a source that errors at once, a size limit hit by the first chunk), the caller's cleanup can
 * run before that open has created the file, which then stays behind.
 */
export async function createNewFileStream(file: string): Promise<WriteStream> {
  const handle = await fs.open(file, 'wx');
  return handle.createWriteStream();
}

export class LocalStore {
  constructor(readonly basePath: string) {}

  resolve(rel: string): string {
    return resolveInPool(this.basePath, rel);
  }

  async ensureReady(): Promise<void> {
    await fs.mkdir(path.join(this.basePath, TMP_DIR), { recursive: true });
  }

  tmpPath(): string {
    return path.join(this.basePath, TMP_DIR, `${randomUUID()}.part`);
  }

  /** Moves a finished temp file to its final name (fsynced first, directory created as needed). */
  async commit(tmp: string, rel: string): Promise<string> {
    const abs = this.resolve(rel);
    await fs.mkdir(path.dirname(abs), { recursive: true });
    await assertNoSymlinkEscape(this.basePath, abs);
    const fh = await fs.open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, abs);
    return abs;
  }

  /** Streams into `rel` via a temp file; returns size and SHA-256 of what was written. */
  async writeStream(rel: string, source: Readable): Promise<{ size: number; sha256: string }> {
    const tmp = this.tmpPath();
    await this.ensureReady();
    const hash = createHash('sha256');
    let size = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        size += chunk.length;
        cb(null, chunk);
      },
    });
    try {
      await pipeline(source, tap, await createNewFileStream(tmp));
      await this.commit(tmp, rel);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
    return { size, sha256: hash.digest('hex') };
  }

  async stat(rel: string): Promise<{ size: number; mtimeMs: number } | null> {
    try {
      const abs = this.resolve(rel);
      await assertNoSymlinkEscape(this.basePath, abs);
      const st = await fs.stat(abs);
      return st.isFile() ? { size: st.size, mtimeMs: st.mtimeMs } : null;
    } catch {
      return null;
    }
  }

  openRead(rel: string, range?: { start: number; end: number }): Readable {
    return createReadStream(this.resolve(rel), range);
  }

  async sha256(rel: string): Promise<string> {
    const hash = createHash('sha256');
    await pipeline(this.openRead(rel), hash);
    return hash.digest('hex');
  }

  /** Idempotent: a missing file is fine. Empty date directories are left for reuse. */
  async remove(rel: string): Promise<boolean> {
    try {
      await fs.unlink(this.resolve(rel));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Free and used bytes of the file system holding the pool. */
  async diskUsage(): Promise<{ free: number; total: number }> {
    const st = await fs.statfs(this.basePath);
    return { free: st.bavail * st.bsize, total: st.blocks * st.bsize };
  }

  /** Removes temp files older than `maxAgeMs` (left by a crash mid-upload). */
  async sweepTemp(maxAgeMs: number): Promise<number> {
    const dir = path.join(this.basePath, TMP_DIR);
    let removed = 0;
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      const p = path.join(dir, name);
      const st = await fs.stat(p).catch(() => null);
      if (st && Date.now() - st.mtimeMs > maxAgeMs) {
        await fs.rm(p, { force: true });
        removed++;
      }
    }
    return removed;
  }
}
