import { Command, CommanderError } from 'commander';
import { registerCommands } from './commands/index.ts';
import { printError } from './output.ts';

const program = new Command();
program
  .name('vmlift')
  .description('Agentless VMware migration by block-level replication (CBT) to a vmlift receiver')
  .version('0.1.0')
  .showHelpAfterError()
  .exitOverride();

try {
  await registerCommands(program, process.argv.slice(2));
  await program.parseAsync(process.argv);
} catch (e) {
  process.exitCode = e instanceof CommanderError ? e.exitCode : printError(e, process.argv.includes('--json'));
}
