#!/usr/bin/env node
// Entry point of `npx pixelfox` and `npm start`: TypeScript runs through tsx, no build step.
import v8 from 'node:v8';

// Before anything is allocated: V8's incremental marking, left on, restarts every ~0.4 s in a worker
// that holds decoded pixels (large ArrayBuffers) across long native renders, and each cycle marks the
// whole ~35 MB heap: ~11 ms of main-thread CPU per 2 MP image (BENCHMARKS.md, row 3). Without it, a
// full collection runs when the old generation is actually full: ~10 per 200 images instead of ~80,
// at the price of one atomic pause (≤ 40 ms measured) instead of incremental steps.
v8.setFlagsFromString('--no-incremental-marking');

const { register } = await import('tsx/esm/api');
register();
const { main } = await import('../services/cli/main.ts');
await main(process.argv.slice(2));
