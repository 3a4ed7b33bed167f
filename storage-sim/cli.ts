/** storage-sim: `serve` runs the array; the other commands are its admin CLI over gRPC. */
import { runProgram } from '../common/cli.js';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseSize } from '../common/size.js';
import { addAdminCommands } from './admin-cli.js';
import type { PoolRecord } from './model.js';
import type { TlsFlags } from '../common/tls.js';

function poolOption(value: string, previous: PoolRecord[]): PoolRecord[] {
  const m = /^([^=]+)=(.+)$/.exec(value);
  if (!m) throw new InvalidArgumentError('write NAME=SIZE, e.g. aggr1=10TiB');
  try {
    return [...previous, { name: m[1]!, capacityBytes: parseSize(m[2]!, '--pool') }];
  } catch (err) {
    throw new InvalidArgumentError(err instanceof Error ? err.message : String(err));
  }
}

export function buildProgram(): Command {
  const program = new Command('storage-sim')
    .description('A simulated NetApp-style SAN array (pools, LUNs, igroups, LUN maps, masked block I/O, persistent reservations) and its admin CLI.')
    .showHelpAfterError();

  program
    .command('serve')
    .description('Run the array as a gRPC server (StorageArrayService, FaultInjectionService, health, reflection).')
    .option('--listen <addr>', 'host:port to listen on (port 0 picks a free port and prints it)', '127.0.0.1:50051')
    .option('--portal-listen <addr>', 'host:port of the block portal, the data plane hosts use (default: the --listen host, a free port)')
    .requiredOption('--data-dir <dir>', 'where array.db and the LUN files live (created if missing)')
    .option('--name <name>', 'array name, fixed at the first start (default sim1)')
    .option('--serial-prefix <prefix>', 'first characters of every LUN serial, fixed at the first start (default PTSM)')
    .option('--pool <name=size>', 'create or grow a pool, e.g. aggr1=10TiB (repeatable; default aggr1=64TiB)', poolOption, [])
    .option('--enable-faults', 'allow FaultInjectionService (tests only)', false)
    .option('--metrics-listen <addr>', 'host:port to serve Prometheus metrics on, at /metrics (off unless given)')
    .option('--tls-cert <file>', "mTLS: the array's certificate (PEM); with --tls-key and --tls-ca, clients need a certificate the CA signed")
    .option('--tls-key <file>', "mTLS: the certificate's private key (PEM)")
    .option('--tls-ca <file>', 'mTLS: the CA certificate that signs clients (PEM)')
    .option('--tls-dir <dir>', 'mTLS from a passthru pki init directory: its array.crt, array.key and ca.crt')
    .addOption(new Option('--log-level <level>', 'log level').choices(['error', 'warn', 'info', 'debug']).default('info'))
    .action(async (o: { listen: string; portalListen?: string; metricsListen?: string; dataDir: string; name?: string; serialPrefix?: string; pool: PoolRecord[]; enableFaults: boolean; logLevel: string } & TlsFlags) => {
      // Loaded here so the admin commands start without SQLite and the server stack.
      const [{ createLogger }, { stopOnSignals }, { serveArray }, { tlsFromFlags }] = await Promise.all([
        import('../common/logging.js'),
        import('../common/server.js'),
        import('./serve.js'),
        import('../common/tls.js'),
      ]);
      const logger = createLogger({ service: 'storage-sim', level: o.logLevel });
      const serving = await serveArray({
        listen: o.listen,
        portalListen: o.portalListen,
        metricsListen: o.metricsListen,
        dataDir: o.dataDir,
        name: o.name,
        serialPrefix: o.serialPrefix,
        pools: o.pool,
        enableFaults: o.enableFaults,
        tls: tlsFromFlags(o, 'array', 'array'),
        logger,
      });
      // The one line on stdout: scripts and tests read the address from it.
      if (serving.metrics) process.stdout.write(`storage-sim metrics on http://${serving.metrics.address}/metrics\n`);
      process.stdout.write(`storage-sim serving on ${serving.running.address} (block portal ${serving.portal.address})\n`);
      stopOnSignals(serving.running, logger, async () => {
        await serving.portal.close();
        serving.array.close();
      });
    });

  addAdminCommands(program);
  return program;
}

export function main(argv: string[]): Promise<void> {
  return runProgram('storage-sim', buildProgram(), argv);
}
