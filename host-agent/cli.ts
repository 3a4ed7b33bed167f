/** host-agent: `serve` runs the host side of passthru for a whole cluster (the embedded default). */
import { runProgram } from '../common/cli.js';
import { Command, Option } from 'commander';
import { addAdminCommands } from './admin-cli.js';
import type { HostAgentTlsFlags } from './tls.js';

export function buildProgram(): Command {
  const program = new Command('host-agent')
    .description('The host side of passthru: hypervisor and failover-cluster model, the crash-safe provisioning workflow, GuestService per VM and AdminService.')
    .showHelpAfterError();

  program
    .command('serve')
    .description('Run the host agent for the cluster the file describes (AdminService on --listen, one GuestService socket per VM).')
    .option('--listen <addr>', 'host:port for AdminService (port 0 picks a free port and prints it)', '127.0.0.1:50061')
    .requiredOption('--storage <addr>', "the storage array's address, host:port")
    .requiredOption('--data-dir <dir>', 'where host-agent.db lives (created if missing)')
    .requiredOption('--cluster <file>', 'the cluster file (JSON: nodes, VMs, owner of Available Storage)')
    .option('--socket-dir <dir>', "where the VMs' GuestService sockets go (default <data-dir>/sock)")
    .option('--metrics-listen <addr>', 'host:port to serve Prometheus metrics on, at /metrics (off unless given)')
    .option('--tls-dir <dir>', 'mTLS from a passthru pki init directory: host-agent.crt for AdminService (admins only), nodes/<node>.crt toward the array, ca.crt')
    .option('--tls-cert <file>', "mTLS: AdminService's certificate (PEM), with --tls-key, --tls-ca and --tls-node-dir")
    .option('--tls-key <file>', "mTLS: AdminService's private key (PEM)")
    .option('--tls-ca <file>', "mTLS: the CA certificate clients' and the array's must chain to (PEM)")
    .option('--tls-node-dir <dir>', "mTLS: each node's <node>.crt and <node>.key, its identity toward the array")
    .option('--array-attempts <n>', 'attempts per array call when the array is unavailable', (v) => Number.parseInt(v, 10))
    .option('--array-timeout-ms <ms>', 'deadline of each array call', (v) => Number.parseInt(v, 10))
    .addOption(new Option('--crash-at <point>', 'tests only: SIGKILL this process at a workflow step, [kind:]step[@before|during|after]').hideHelp())
    .addOption(new Option('--log-level <level>', 'log level').choices(['error', 'warn', 'info', 'debug']).default('info'))
    .action(
      async (o: {
        listen: string;
        storage: string;
        dataDir: string;
        cluster: string;
        socketDir?: string;
        metricsListen?: string;
        arrayAttempts?: number;
        arrayTimeoutMs?: number;
        crashAt?: string;
        logLevel: string;
      } & HostAgentTlsFlags) => {
        const [{ createLogger }, { stopOnSignals }, { serveHostAgent }, { readClusterFile }, { hostAgentTls }] = await Promise.all([
          import('../common/logging.js'),
          import('../common/server.js'),
          import('./serve.js'),
          import('./cluster-file.js'),
          import('./tls.js'),
        ]);
        const logger = createLogger({ service: 'host-agent', level: o.logLevel });
        const retry: { attempts?: number; callTimeoutMs?: number } = {};
        if (o.arrayAttempts !== undefined) retry.attempts = o.arrayAttempts;
        if (o.arrayTimeoutMs !== undefined) retry.callTimeoutMs = o.arrayTimeoutMs;
        const serving = await serveHostAgent({
          listen: o.listen,
          storage: o.storage,
          dataDir: o.dataDir,
          cluster: readClusterFile(o.cluster),
          socketDir: o.socketDir,
          metricsListen: o.metricsListen,
          logger,
          retry,
          crashAt: o.crashAt,
          tls: hostAgentTls(o),
        });
        process.stdout.write(`host-agent listening on ${serving.admin.address} (recovering)\n`);
        if (serving.metrics) process.stdout.write(`host-agent metrics on http://${serving.metrics.address}/metrics\n`);
        stopOnSignals(serving.admin, logger, () => serving.close());
        await serving.ready;
        // Scripts and tests wait for this line: from here on health says SERVING.
        process.stdout.write(`host-agent serving on ${serving.admin.address}\n`);
      },
    );
  addAdminCommands(program);
  return program;
}

export function main(argv: string[]): Promise<void> {
  return runProgram('host-agent', buildProgram(), argv);
}
