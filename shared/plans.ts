// Plans are product rules, kept in code (unit-tested) rather than in the database:
// changing what a plan allows is a deploy, not an operator setting.
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export const PLAN_NAMES = ['free', 'premium', 'premium_max'] as const;
export type PlanName = (typeof PLAN_NAMES)[number];

export interface Plan {
  readonly name: PlanName;
  /** largest single file, bytes */
  readonly maxFileBytes: number;
  /** total bytes of originals a user may keep */
  readonly quotaBytes: number;
  /** output formats the plan may receive besides the original format */
  readonly formats: { readonly original: true; readonly webp: boolean; readonly avif: boolean };
}

export const PLANS: Readonly<Record<PlanName, Plan>> = Object.freeze({
  free: {
    name: 'free',
    maxFileBytes: 5 * MiB,
    quotaBytes: 25 * GiB,
    formats: { original: true, webp: false, avif: false },
  },
  premium: {
    name: 'premium',
    maxFileBytes: 50 * MiB,
    quotaBytes: 500 * GiB,
    formats: { original: true, webp: true, avif: false },
  },
  premium_max: {
    name: 'premium_max',
    maxFileBytes: 100 * MiB,
    quotaBytes: 2000 * GiB,
    formats: { original: true, webp: true, avif: true },
  },
});

export function isPlanName(value: string): value is PlanName {
  return (PLAN_NAMES as readonly string[]).includes(value);
}

export function planOf(name: string): Plan {
  return isPlanName(name) ? PLANS[name] : PLANS.free;
}
