// `npx pixelfox <command>`: every operator action. `npx pixelfox --help` lists them.
import { parseArgs } from 'node:util';
import { ConfigError } from '../../shared/config.js';
import { errorMessage } from '../../shared/errors.js';
import { COMMANDS, type Command } from './commands.js';

function help(): string {
  const width = Math.max(...COMMANDS.map((c) => c.usage.length));
  return [
    'pixelfox — event-sourced image storage',
    '',
    'Usage: npx pixelfox <command> [options]',
    '',
    ...COMMANDS.map((c) => `  ${c.usage.padEnd(width)}  ${c.summary}`),
    '',
    'Listings take --json. Configuration comes from the environment (see README).',
  ].join('\n');
}

function match(argv: string[]): { cmd: Command; rest: string[] } | null {
  let best: { cmd: Command; rest: string[] } | null = null;
  for (const cmd of COMMANDS) {
    const words = cmd.name.split(' ');
    if (words.every((w, i) => argv[i] === w) && (!best || words.length > best.cmd.name.split(' ').length)) {
      best = { cmd, rest: argv.slice(words.length) };
    }
  }
  return best;
}

export async function main(argv: string[]): Promise<void> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    console.log(help());
    return;
  }
  const m = match(argv);
  if (!m) {
    console.error(`unknown command: ${argv.join(' ')}\n\n${help()}`);
    process.exitCode = 2;
    return;
  }
  if (m.rest.includes('--help') || m.rest.includes('-h')) {
    console.log(`Usage: npx pixelfox ${m.cmd.usage}\n\n${m.cmd.summary}`);
    return;
  }
  try {
    const { values, positionals } = parseArgs({
      args: m.rest,
      options: m.cmd.options ?? {},
      allowPositionals: true,
      strict: true,
    });
    const code = await m.cmd.run(values as Record<string, string | boolean | undefined>, positionals);
    if (typeof code === 'number') process.exitCode = code;
  } catch (err) {
    if (err instanceof ConfigError) console.error(err.message);
    else console.error(`error: ${errorMessage(err)}`);
    // Exit now: connections opened before the failure must not keep a half-started process alive.
    process.exit(process.exitCode || 1);
  }
}
