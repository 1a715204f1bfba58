// Seeded randomness for fault timing: every run prints its seed; CHAOS_SEED=<n> replays the same schedule.
export interface Rng {
  seed: number;
  next(): number;
  between(min: number, max: number): number;
  shuffle<T>(xs: readonly T[]): T[];
}

export function rng(seed = Number(process.env.CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31))): Rng {
  let x = seed >>> 0 || 1;
  const next = () => {
    // xorshift32
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
  return {
    seed,
    next,
    between: (min, max) => Math.floor(min + next() * (max - min)),
    shuffle: (xs) => {
      const a = [...xs];
      for (let i = a.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [a[i], a[j]] = [a[j] as (typeof a)[number], a[i] as (typeof a)[number]];
      }
      return a;
    },
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
