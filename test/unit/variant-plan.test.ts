import t from 'tap';
import { PLAN_NAMES } from '../../shared/plans.js';
import type { PlanName } from '../../shared/plans.js';
import {
  AVIF_MIN_EDGE,
  entitlementsFor,
  originalThumbnailFormat,
  outputSize,
  planVariants,
  widthWithin,
} from '../../services/variants/plan.js';
import type {
  Entitlements,
  PlanInput,
  SourceFormat,
  ThumbnailToggles,
} from '../../services/variants/plan.js';

const ID = '0b6a4f5e-3c2d-4e1f-9a8b-7c6d5e4f3a2b';
const DATE = '2024/05/17';
const ALL: Entitlements = { original: true, webp: true, avif: true };
const input = (over: Partial<PlanInput> = {}): PlanInput => ({
  imageId: ID,
  datePath: DATE,
  format: 'jpeg',
  width: 3264,
  height: 2448,
  ...over,
});
const types = (input_: PlanInput, ent: Entitlements = ALL): string[] =>
  planVariants(input_, ent).map((s) => s.variantType);

t.test('entitlements: a format needs the global toggle, the plan and the user preference', async (t) => {
  const bools = [false, true] as const;
  const planAllows: Record<PlanName, { webp: boolean; avif: boolean }> = {
    free: { webp: false, avif: false },
    premium: { webp: true, avif: false },
    premium_max: { webp: true, avif: true },
  };
  let cases = 0;
  for (const plan of PLAN_NAMES) {
    for (const thumbnail_original of bools) {
      for (const thumbnail_webp of bools) {
        for (const thumbnail_avif of bools) {
          for (const prefWebp of [undefined, false, true]) {
            for (const prefAvif of [undefined, false, true]) {
              const toggles: ThumbnailToggles = { thumbnail_original, thumbnail_webp, thumbnail_avif };
              const prefs = {
                ...(prefWebp === undefined ? {} : { webp: prefWebp }),
                ...(prefAvif === undefined ? {} : { avif: prefAvif }),
              };
              const ent = entitlementsFor(toggles, plan, prefs);
              const label = `${plan} ${JSON.stringify(toggles)} ${JSON.stringify(prefs)}`;
              t.equal(ent.original, thumbnail_original, `original: ${label}`);
              t.equal(
                ent.webp,
                thumbnail_webp && planAllows[plan].webp && prefWebp !== false,
                `webp: ${label}`,
              );
              t.equal(
                ent.avif,
                thumbnail_avif && planAllows[plan].avif && prefAvif !== false,
                `avif: ${label}`,
              );
              cases++;
            }
          }
        }
      }
    }
  }
  t.equal(cases, 3 * 8 * 9);
});

t.test('entitlements: spot checks in words', async (t) => {
  const on: ThumbnailToggles = { thumbnail_original: true, thumbnail_webp: true, thumbnail_avif: true };
  t.same(
    entitlementsFor(on, 'free', {}),
    { original: true, webp: false, avif: false },
    'free: original only',
  );
  t.same(
    entitlementsFor(on, 'free', { webp: true, avif: true }),
    { original: true, webp: false, avif: false },
    'prefs cannot exceed the plan',
  );
  t.same(entitlementsFor(on, 'premium', {}), { original: true, webp: true, avif: false }, 'premium: + WebP');
  t.same(
    entitlementsFor(on, 'premium_max', {}),
    { original: true, webp: true, avif: true },
    'premium_max: + WebP + AVIF',
  );
  t.same(
    entitlementsFor(on, 'premium_max', { avif: false }),
    { original: true, webp: true, avif: false },
    'user opts out of AVIF',
  );
  t.same(
    entitlementsFor({ ...on, thumbnail_original: false }, 'premium_max', {}),
    { original: false, webp: true, avif: true },
    'original toggle off: no original-format thumbnails',
  );
  t.same(
    entitlementsFor({ ...on, thumbnail_webp: false }, 'premium', { webp: true }).webp,
    false,
    'global WebP toggle wins',
  );
});

t.test('JPEG with everything: exact variant types and paths, thumbnails first', async (t) => {
  const specs = planVariants(input(), ALL);
  t.same(
    specs.map((s) => [s.variantType, s.size, s.format, s.maxWidth, s.relPath]),
    [
      ['small_jpeg', 'small', 'jpeg', 200, `variants/2024/05/17/${ID}_small.jpg`],
      ['small_webp', 'small', 'webp', 200, `variants/2024/05/17/${ID}_small.webp`],
      ['small_avif', 'small', 'avif', 200, `variants/2024/05/17/${ID}_small.avif`],
      ['medium_jpeg', 'medium', 'jpeg', 500, `variants/2024/05/17/${ID}_medium.jpg`],
      ['medium_webp', 'medium', 'webp', 500, `variants/2024/05/17/${ID}_medium.webp`],
      ['medium_avif', 'medium', 'avif', 500, `variants/2024/05/17/${ID}_medium.avif`],
      ['webp', 'full', 'webp', null, `variants/2024/05/17/${ID}.webp`],
      ['avif', 'full', 'avif', null, `variants/2024/05/17/${ID}.avif`],
    ],
  );
});

t.test('original-format thumbnails per source format; file extension matches the bytes', async (t) => {
  const expected: Record<SourceFormat, [string, string]> = {
    jpeg: ['small_jpeg', '_small.jpg'],
    png: ['small_png', '_small.png'],
    bmp: ['small_png', '_small.png'],
    gif: ['small_gif', '_small.gif'],
    webp: ['small_webp', '_small.webp'],
    avif: ['small_avif', '_small.avif'],
  };
  for (const [format, [type, suffix]] of Object.entries(expected) as [SourceFormat, [string, string]][]) {
    const specs = planVariants(input({ format }), { original: true, webp: false, avif: false });
    t.same(
      specs.map((s) => s.variantType),
      [type, type.replace('small', 'medium')],
      `${format}: original format only`,
    );
    t.ok(specs[0]?.relPath.endsWith(`${ID}${suffix}`), `${format}: ${specs[0]?.relPath}`);
  }
  t.equal(originalThumbnailFormat('bmp'), 'png');
});

t.test('GIF: thumbnails only, never full-size formats', async (t) => {
  t.same(types(input({ format: 'gif' })), [
    'small_gif',
    'small_webp',
    'small_avif',
    'medium_gif',
    'medium_webp',
    'medium_avif',
  ]);
  t.ok(
    planVariants(input({ format: 'gif' }), ALL).every((s) => s.size !== 'full'),
    'no full size',
  );
});

t.test('AVIF input: no full-size AVIF, thumbnails still made (once per format)', async (t) => {
  t.same(types(input({ format: 'avif' })), [
    'small_avif',
    'small_webp',
    'medium_avif',
    'medium_webp',
    'webp',
  ]);
  t.same(types(input({ format: 'avif' }), { original: false, webp: false, avif: true }), [
    'small_avif',
    'medium_avif',
  ]);
});

t.test('WebP input: no full-size WebP re-encode, one WebP thumbnail per size', async (t) => {
  t.same(types(input({ format: 'webp' })), [
    'small_webp',
    'small_avif',
    'medium_webp',
    'medium_avif',
    'avif',
  ]);
  const paths = planVariants(input({ format: 'webp' }), ALL).map((s) => s.relPath);
  t.equal(new Set(paths).size, paths.length, 'no duplicate paths');
});

t.test('full-size AVIF only when the image does not fit in 64×64', async (t) => {
  const hasFullAvif = (width: number, height: number): boolean =>
    types(input({ width, height })).includes('avif');
  t.equal(AVIF_MIN_EDGE, 64);
  t.notOk(hasFullAvif(64, 64), '64×64');
  t.notOk(hasFullAvif(16, 10), '16×10');
  t.ok(hasFullAvif(65, 64), '65×64');
  t.ok(hasFullAvif(64, 65), '64×65');
  t.ok(hasFullAvif(1000, 20), 'wide banner');
  t.ok(types(input({ width: 64, height: 64 })).includes('small_avif'), 'AVIF thumbnails are still made');
  t.ok(types(input({ width: 64, height: 64 })).includes('webp'), 'full WebP is still made');
});

t.test('nothing entitled → nothing planned', async (t) => {
  t.same(planVariants(input(), { original: false, webp: false, avif: false }), []);
  t.same(types(input(), { original: false, webp: true, avif: false }), ['small_webp', 'medium_webp', 'webp']);
});

t.test('deterministic: same input, same plan', async (t) => {
  t.same(planVariants(input(), ALL), planVariants(input(), ALL));
});

t.test('rejects ids and dates that could escape the variants folder', async (t) => {
  t.throws(() => planVariants(input({ imageId: '../../etc/passwd' }), ALL), RangeError);
  t.throws(() => planVariants(input({ datePath: '2024/05/17/..' }), ALL), RangeError);
  t.throws(() => planVariants(input({ datePath: '2024-05-17' }), ALL), RangeError);
  t.throws(() => planVariants(input({ width: 0 }), ALL), RangeError);
});

t.test('outputSize: never enlarged, height by aspect ratio', async (t) => {
  t.same(outputSize(200, 3264, 2448), { width: 200, height: 150 });
  t.same(outputSize(500, 2448, 3264), { width: 500, height: 667 });
  t.same(outputSize(500, 300, 100), { width: 300, height: 100 }, 'smaller image keeps its size');
  t.same(outputSize(200, 200, 50), { width: 200, height: 50 }, 'equal width untouched');
  t.same(outputSize(200, 5000, 10), { width: 200, height: 1 }, 'at least 1 px high');
  t.same(outputSize(null, 640, 480), { width: 640, height: 480 }, 'full size');
});

t.test(
  'full-size AVIF above avifMaxPixels: capped to fit, aspect kept; below or at it: full size',
  async (t) => {
    const budget = 24_000_000;
    // 50 MP, 4:3 (the case)
    const big = planVariants(input({ width: 8165, height: 6124 }), ALL, { avifMaxPixels: budget });
    const avif = big.find((s) => s.variantType === 'avif');
    t.equal(avif?.size, 'full');
    t.equal(avif?.maxWidth, 5656);
    const size = outputSize(avif?.maxWidth ?? null, 8165, 6124);
    t.same(size, { width: 5656, height: 4242 });
    t.ok(size.width * size.height <= budget, 'within the budget');
    t.same(
      big.filter((s) => s.variantType !== 'avif'),
      planVariants(input({ width: 8165, height: 6124 }), ALL).filter((s) => s.variantType !== 'avif'),
      'WebP stays full size, thumbnails unchanged',
    );
    for (const [width, height] of [
      [6000, 4000],
      [4000, 6000],
    ] as const) {
      t.equal(
        planVariants(input({ width, height }), ALL, { avifMaxPixels: budget }).find(
          (s) => s.variantType === 'avif',
        )?.maxWidth,
        null,
        `${width}×${height} is exactly the budget: full size`,
      );
    }
    t.equal(
      planVariants(input(), ALL, { avifMaxPixels: budget }).find((s) => s.variantType === 'avif')?.maxWidth,
      null,
      '8 MP: full size',
    );
    t.equal(
      planVariants(input({ width: 8165, height: 6124 }), ALL, { avifMaxPixels: 0 }).find(
        (s) => s.variantType === 'avif',
      )?.maxWidth,
      null,
      '0: no cap',
    );
  },
);

t.test('widthWithin: the largest width whose output fits the pixel budget', async (t) => {
  for (const [w, h, budget] of [
    [8165, 6124, 24e6],
    [6124, 8165, 24e6],
    [30000, 1000, 1e6],
    [1000, 30000, 1e6],
    [3264, 2448, 2e6],
    [10001, 9999, 12_345_678],
    [7, 50_000_000, 1e6],
  ] as const) {
    const mw = widthWithin(budget, w, h);
    const out = outputSize(mw, w, h);
    t.ok(
      out.width * out.height <= budget || mw === 1,
      `${w}×${h} in ${budget}: ${out.width}×${out.height} fits`,
    );
    const next = outputSize(mw + 1, w, h);
    t.ok(mw === w || next.width * next.height > budget, `${w}×${h} in ${budget}: one more column would not`);
    t.ok(Math.abs(out.width / out.height - w / h) / (w / h) < 0.01 || out.height < 100, 'aspect kept');
  }
  t.equal(widthWithin(24e6, 4000, 3000), 4000, 'fits already: unchanged');
});
