// Read-your-writes and "tell me when it changes" without polling Postgres: the projector sends a NOTIFY
// inside each batch's transaction naming the checkpoint it moved to and the images it touched
// (./read-invalidation.ts), so a process listening on the read-model channel learns of a commit ~1 ms
// after it happens. While the LISTEN connection is down (or before it is up) notifications may be
// lost, so every wait falls back to reading the checkpoint, as before this existed.
import { checkpointSeq } from '../projections/projector.js';
import type { Sql } from './db.js';
import type { Logger } from './logger.js';
import { listenReliably, WATCH_APPLICATION_NAME, type Listening } from './pg-listen.js';
import { parseInvalidation, readModelChannel, type Invalidation } from './read-invalidation.js';
import type { Names } from '../streams/subjects.js';

/** While listening: how often a wait re-reads the checkpoint anyway (a notification is never relied on alone). */
const SAFETY_RECHECK_MS = 1_000;
/** While not listening: how often the checkpoint is read (the poll this replaces). */
const POLL_MS = 25;

type Wake = () => void;

export class ProjectionWatch {
  /** The highest checkpoint a notification reported committed (0: none seen since the last `up`). */
  private notifiedSeq = 0;
  private listening = false;
  private readonly seqWaiters = new Set<{ seq: number; wake: Wake }>();
  private readonly imageWaiters = new Map<string, Set<Wake>>();

  constructor(
    private readonly sql: Sql,
    private readonly schema = 'rm',
  ) {}

  apply(inv: Invalidation): void {
    switch (inv.kind) {
      case 'images':
        for (const id of inv.ids) this.wakeImage(id);
        this.advance(inv.seq);
        return;
      case 'all-images':
      case 'all':
        this.wakeAllImages();
        if (inv.kind === 'all-images') this.advance(inv.seq);
        return;
      case 'auth':
        return;
      default: {
        const never: never = inv;
        throw new Error(`unknown invalidation ${JSON.stringify(never)}`);
      }
    }
  }

  up(): void {
    this.listening = true;
  }

  /** Notifications may be lost from now on: every waiter re-reads Postgres. */
  down(): void {
    this.listening = false;
    this.notifiedSeq = 0;
    for (const w of this.seqWaiters) w.wake();
    this.wakeAllImages();
  }

  /** Resolves once the projector's checkpoint is at `seq` or beyond, or after `ms` (false then). */
  async waitForSeq(seq: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (this.listening && this.notifiedSeq >= seq) return true;
      if (!this.listening || this.notifiedSeq === 0) {
        // Not listening, or nothing heard yet: the checkpoint itself says.
        if ((await this.checkpoint()) >= seq) return true;
      }
      const left = deadline - Date.now();
      if (left <= 0) return false;
      if (!this.listening) {
        await sleep(Math.min(POLL_MS, left));
        continue;
      }
      const woken = await this.sleepUntil(Math.min(SAFETY_RECHECK_MS, left), (wake) => {
        const w = { seq, wake };
        this.seqWaiters.add(w);
        return () => this.seqWaiters.delete(w);
      });
      if (!woken && (await this.checkpoint()) >= seq) return true;
    }
  }

  /**
   * Resolves when a committed batch names `imageId` (or replaced the read models), after `ms`, or when
   * `signal` aborts; true if woken by a change. Not listening: after a short poll interval, so the
   * caller re-reads anyway.
   */
  waitForImage(imageId: string, ms: number, signal?: AbortSignal): Promise<boolean> {
    const limit = this.listening ? ms : Math.min(ms, 250);
    return this.sleepUntil(
      limit,
      (wake) => {
        let set = this.imageWaiters.get(imageId);
        if (!set) this.imageWaiters.set(imageId, (set = new Set()));
        set.add(wake);
        return () => {
          set.delete(wake);
          if (set.size === 0) this.imageWaiters.delete(imageId);
        };
      },
      signal,
    );
  }

  private advance(seq: number): void {
    if (seq <= this.notifiedSeq) return;
    this.notifiedSeq = seq;
    for (const w of this.seqWaiters) if (w.seq <= seq) w.wake();
  }

  private wakeImage(id: string): void {
    const set = this.imageWaiters.get(id);
    if (set) for (const wake of [...set]) wake();
  }

  private wakeAllImages(): void {
    for (const set of [...this.imageWaiters.values()]) for (const wake of [...set]) wake();
  }

  private checkpoint(): Promise<number> {
    return checkpointSeq(this.sql, this.schema);
  }

  /** Registers a waker, resolves true when it is called, false after `ms` or on abort. */
  private sleepUntil(
    ms: number,
    register: (wake: Wake) => () => void,
    signal?: AbortSignal,
  ): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      if (signal?.aborted) return resolve(false);
      const done = (woken: boolean) => {
        clearTimeout(timer);
        unregister();
        signal?.removeEventListener('abort', onAbort);
        resolve(woken);
      };
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), ms);
      const unregister = register(() => done(true));
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A watch fed by this namespace's read-model channel, on a LISTEN connection of its own. */
export function startProjectionWatch(
  databaseUrl: string,
  sql: Sql,
  names: Pick<Names, 'ns'>,
  log: Logger,
): { watch: ProjectionWatch; close(): Promise<void> } {
  const watch = new ProjectionWatch(sql);
  const listening: Listening = listenReliably(
    databaseUrl,
    [readModelChannel(names)],
    {
      notify: (channel, payload) => watch.apply(parseInvalidation(channel, payload)),
      up: () => watch.up(),
      down: () => watch.down(),
    },
    log.child({ component: 'projection-watch' }),
    WATCH_APPLICATION_NAME,
  );
  return {
    watch,
    close: async () => {
      watch.down();
      await listening.close();
    },
  };
}
