#!/usr/bin/env node
// Entry point of `npx pixelfox` and `npm start`: TypeScript runs through tsx, no build step.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../services/cli/main.ts');
await main(process.argv.slice(2));
