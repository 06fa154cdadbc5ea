import type { Command } from 'commander';
import { register as registerJobs } from './job.ts';
import { register as registerConnector } from './connector.ts';
import { register as registerDemo } from './demo.ts';
import { register as registerAgent } from './agent.ts';
import { register as registerReceiver } from './receiver.ts';
import { register as registerImage } from './image.ts';
import { register as registerVc } from './vc.ts';
import { register as registerLab } from './lab.ts';
import { register as registerSource } from './source.ts';

/**
 * Each area of vmlift adds its command group here: one module per group in this folder,
 * exporting `register(program)`. Keep this list the only place that knows them all.
 */
export function registerCommands(program: Command): void {
  void program;
  registerJobs(program);
  registerConnector(program);
  registerDemo(program);
  registerAgent(program);
  registerReceiver(program);
  registerImage(program);
  registerVc(program);
  registerLab(program);
  registerSource(program);
}
