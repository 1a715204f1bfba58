// Summarises a V8 CPU profile (`node --cpu-prof`, or BENCH_CPU_PROF=<dir> for the benches' spawned
// nodes): self time by function and by file, heaviest first.
//
//   node --import tsx bench/profile-top.ts [--top 25] <file.cpuprofile>...
// (`node --cpu-prof` also writes one profile per worker thread, e.g. tsx's loader thread: mostly idle.)
import { readFile } from 'node:fs/promises';
import { isMain } from './lib.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export function summarise(p: Profile, top = 25): string {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  p.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n) continue;
    const url = n.callFrame.url.replace(/^file:\/\//, '').replace(/.*\/node_modules\//, 'node_modules/');
    const key = `${n.callFrame.functionName || '(anonymous)'} ${url}:${n.callFrame.lineNumber + 1}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const f = url || `(${n.callFrame.functionName})`;
    file.set(f, (file.get(f) ?? 0) + us);
  }
  const list = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(
        ([k, us]) =>
          `${((100 * us) / total).toFixed(1).padStart(5)} %  ${(us / 1000).toFixed(0).padStart(6)} ms  ${k}`,
      )
      .join('\n');
  return `total ${(total / 1000).toFixed(0)} ms sampled\n\nby function (self):\n${list(fn)}\n\nby file (self):\n${list(file)}`;
}

if (isMain(import.meta.url)) {
  const args = process.argv.slice(2);
  let top = 25;
  const at = args.indexOf('--top');
  if (at !== -1) top = Number(args.splice(at, 2)[1] ?? 25);
  if (args.length === 0) throw new Error('usage: profile-top.ts [--top N] <file.cpuprofile>...');
  for (const file of args) {
    console.log(`== ${file}`);
    console.log(summarise(JSON.parse(await readFile(file, 'utf8')) as Profile, top));
  }
}
