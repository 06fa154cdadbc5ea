import type { Command } from 'commander';

/** An option as data: its flags and its help line. */
export type OptionSpec = readonly [flags: string, help: string];

/** Adds each option of a table to `cmd`: commands that share a set of flags share the table. */
export function addOptions(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const [flags, help] of specs) cmd.option(flags, help);
  return cmd;
}
