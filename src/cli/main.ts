import { Command, CommanderError } from 'commander';
import { isUserError, errorMessage } from '../util/errors.ts';
import { registerCommands } from './commands/index.ts';

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
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode;
  } else if (isUserError(e)) {
    process.stderr.write(`vmlift: error: ${e.message}\n${e.fix ? `  fix: ${e.fix}\n` : ''}`);
    process.exitCode = e.exitCode;
  } else {
    process.stderr.write(`vmlift: unexpected error: ${errorMessage(e)}\n`);
    if (process.env.VMLIFT_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
    process.exitCode = 2;
  }
}
