import type { Command } from 'commander';

type Group = () => Promise<{ register(program: Command): void }>;

/**
 * Each area of vmlift adds its command group here: one module per group in this folder,
 * exporting `register(program)`. Keep this table the only place that knows them all.
 * Only the module of the command being run is loaded (the agent does not load the vSphere client,
 * the receiver does not load SQLite): faster start and less memory. Help loads them all.
 */
const GROUPS: Record<string, Group> = {
  job: () => import('./job.ts'),
  workgroup: () => import('./job.ts'),
  template: () => import('./job.ts'),
  connector: () => import('./connector.ts'),
  demo: () => import('./demo.ts'),
  agent: () => import('./agent.ts'),
  receiver: () => import('./receiver.ts'),
  image: () => import('./image.ts'),
  vc: () => import('./vc.ts'),
  lab: () => import('./lab.ts'),
  source: () => import('./source.ts'),
};

/** Register the command group named by the first operand of `args` (argv after the script), or all. */
export async function registerCommands(program: Command, args: string[] = []): Promise<void> {
  const first = args.find((a) => !a.startsWith('-'));
  const one = first !== undefined && Object.hasOwn(GROUPS, first) ? GROUPS[first] : undefined;
  const loaders = one ? [one] : [...new Set(Object.values(GROUPS))];
  const modules = await Promise.all(loaders.map((l) => l()));
  for (const m of new Set(modules)) m.register(program);
}
