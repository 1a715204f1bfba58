// Output helpers: aligned tables for people, JSON for scripts, progress bars on a terminal and plain
// progress lines otherwise.
export function printTable(rows: Record<string, unknown>[], columns: string[]): void {
  if (rows.length === 0) {
    console.log('(none)');
    return;
  }
  const cell = (v: unknown) =>
    v === null || v === undefined
      ? '-'
      : v instanceof Date
        ? v.toISOString()
        : typeof v === 'object'
          ? JSON.stringify(v)
          : String(v);
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  console.log(columns.map((c, i) => c.toUpperCase().padEnd(widths[i] ?? 0)).join('  '));
  for (const r of rows) console.log(columns.map((c, i) => cell(r[c]).padEnd(widths[i] ?? 0)).join('  '));
}

export function printJson(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}

export interface Progress {
  update(done: number, total?: number): void;
  finish(): void;
}

export function progress(
  label: string,
  total: number,
  stream: NodeJS.WriteStream = process.stderr,
): Progress {
  const started = Date.now();
  let last = 0;
  let tot = total;
  const tty = stream.isTTY === true;
  const render = (done: number, final = false) => {
    const now = Date.now();
    if (!final && now - last < (tty ? 100 : 2_000)) return;
    last = now;
    const secs = Math.max(0.001, (now - started) / 1000);
    const rate = done / secs;
    const eta = rate > 0 && tot > done ? Math.round((tot - done) / rate) : 0;
    const pct = tot > 0 ? Math.min(1, done / tot) : 1;
    const text = `${done}/${tot} ${rate.toFixed(0)}/s ETA ${eta}s`;
    if (tty) {
      const width = 30;
      const bar = '█'.repeat(Math.round(pct * width)).padEnd(width, '░');
      stream.write(`\r${label} ${bar} ${(pct * 100).toFixed(1)}% ${text}   `);
      if (final) stream.write('\n');
    } else {
      stream.write(`${label}: ${text}\n`);
    }
  };
  return {
    update: (done, t) => {
      if (t !== undefined) tot = t;
      render(done);
    },
    finish: () => render(tot, true),
  };
}
