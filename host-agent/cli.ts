/** host-agent: `serve` runs the host side of passthru for a whole cluster (the embedded default). */
import { intArg, runProgram, sizeArg } from '../common/cli.js';
import { DEFAULT_GUEST_LIMITS } from './limits.js';
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
    .option('--guest-rate <n>', `requests a second each VM's endpoint takes, block I/O aside (default ${DEFAULT_GUEST_LIMITS.ratePerSecond})`, intArg('--guest-rate', 1, 1_000_000))
    .option('--guest-burst <n>', `requests a VM may make at once after being quiet (default ${DEFAULT_GUEST_LIMITS.burst})`, intArg('--guest-burst', 1, 1_000_000))
    .option('--guest-operations <n>', `operations a VM may have running at once (default ${DEFAULT_GUEST_LIMITS.operationsInFlight})`, intArg('--guest-operations', 1, 100_000))
    .option('--guest-io <n>', `block I/O calls a VM may have in flight at once (default ${DEFAULT_GUEST_LIMITS.ioInFlight})`, intArg('--guest-io', 1, 100_000))
    .option('--vm-max-disks <n>', "disks a VM may have unless the cluster file gives it its own maxDisks (default: its SCSI locations)", intArg('--vm-max-disks', 0, 1_000_000))
    .option('--vm-max-bytes <size>', 'bytes of disks a VM may have unless the cluster file gives it its own maxBytes, e.g. 10TiB (default: no limit)', sizeArg('--vm-max-bytes'))
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
        guestRate?: number;
        guestBurst?: number;
        guestOperations?: number;
        guestIo?: number;
        vmMaxDisks?: number;
        vmMaxBytes?: number;
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
          limits: {
            ...(o.guestRate !== undefined ? { ratePerSecond: o.guestRate } : {}),
            ...(o.guestBurst !== undefined ? { burst: o.guestBurst } : {}),
            ...(o.guestOperations !== undefined ? { operationsInFlight: o.guestOperations } : {}),
            ...(o.guestIo !== undefined ? { ioInFlight: o.guestIo } : {}),
            ...(o.vmMaxDisks !== undefined ? { maxDisks: o.vmMaxDisks } : {}),
            ...(o.vmMaxBytes !== undefined ? { maxBytes: o.vmMaxBytes } : {}),
          },
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
