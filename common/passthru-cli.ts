/**
 * passthru: what spans the three programs. Today the local CA for mTLS:
 *   passthru pki init DIR [--cluster FILE] [--node NAME=IQN]... [--host NAME]... [--days N]
 *   passthru pki show FILE...
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { Command, InvalidArgumentError as UsageError } from 'commander';
import { collect, EXIT_CODES, formatFields, formatTable, intArg, runProgram, statusName, usageExitCodes } from './cli.js';
import { isDomainError } from './errors.js';
import { identityOfX509 } from './identity.js';
import { statusOfKind } from './status.js';

function nodeOption(value: string, previous: { name: string; initiator: string }[]): { name: string; initiator: string }[] {
  const m = /^([^=]+)=(.+)$/.exec(value);
  if (!m) throw new UsageError('write NAME=INITIATOR, e.g. node1=iqn.2026-11.dev.passthru:node1');
  return [...previous, { name: m[1]!, initiator: m[2]! }];
}

/** A refusal as the other CLIs print one: `passthru: <STATUS>: message`, its exit code. */
function fail(err: unknown): void {
  if (isDomainError(err)) {
    const code = statusOfKind[err.kind];
    process.stderr.write(`passthru: ${statusName(code)}: ${err.message}\n`);
    process.exitCode = EXIT_CODES.get(code) ?? 1;
    return;
  }
  process.stderr.write(`passthru: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}

export function buildProgram(): Command {
  const program = new Command('passthru').description('Tools that span passthru\'s programs: the local certificate authority for mTLS.').showHelpAfterError();
  const pki = program.command('pki').description('A local CA and the certificates of the array, the host agent, each host node and an admin.');

  pki
    .command('init <dir>')
    .description(
      'Make (or complete) DIR: ca.crt/ca.key, array.*, host-agent.*, admin.*, nodes/<node>.* (keys 0600). ' +
        'Files already there are kept when they say what is asked; nothing is ever overwritten.',
    )
    .option('--cluster <file>', "the host agent's cluster file: one certificate per node, binding its name and initiator")
    .option('--node <name=initiator>', 'a host node (repeatable; besides or instead of --cluster)', nodeOption, [])
    .option('--host <name>', 'a DNS name or IP address the array and host agent are reached at (repeatable; default localhost, 127.0.0.1, ::1)', collect, [])
    .option('--days <n>', 'validity of the certificates issued now (default 825)', intArg('--days', 1, 3650))
    .option('--json', 'print one JSON document on stdout instead of text')
    .action(async (dir: string, o: { cluster?: string; node: { name: string; initiator: string }[]; host: string[]; days?: number; json?: boolean }) => {
      try {
        const { initPki } = await import('./pki.js');
        const nodes = [...o.node];
        let caName: string | undefined;
        if (o.cluster) {
          const { readClusterFile } = await import('../host-agent/cluster-file.js');
          const cluster = readClusterFile(o.cluster);
          caName = `passthru CA ${cluster.name}`;
          nodes.push(...cluster.nodes.map((n) => ({ name: n.name, initiator: n.initiator })));
        }
        if (nodes.length === 0) throw new UsageError('name the host nodes: --cluster FILE or --node NAME=INITIATOR');
        const files = await initPki({ dir, nodes, hosts: o.host, days: o.days, caName });
        if (o.json) process.stdout.write(`${JSON.stringify({ dir, files }, null, 2)}\n`);
        else process.stdout.write(formatTable([{ header: 'FILE' }, { header: 'ACTION' }, { header: 'IDENTITY' }], files.map((f) => [f.path, f.action, f.identity])));
      } catch (err) {
        if (err instanceof UsageError) {
          process.stderr.write(`passthru: ${err.message}\n`);
          process.exitCode = 2;
          return;
        }
        fail(err);
      }
    });

  pki
    .command('show <file...>')
    .description('What certificates say: role, node, initiator, subject, issuer, validity, host names.')
    .option('--json', 'print one JSON document on stdout instead of text')
    .action((files: string[], o: { json?: boolean }) => {
      const shown = [];
      for (const file of files) {
        let cert: X509Certificate;
        try {
          cert = new X509Certificate(readFileSync(file));
        } catch (err) {
          fail(new Error(`${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : 'not a PEM certificate'}`));
          return;
        }
        const id = identityOfX509(cert);
        shown.push({
          file,
          role: id.role ?? null,
          node: id.node ?? null,
          initiator: id.initiator ?? null,
          subject: id.subject,
          issuer: cert.issuer.split('\n').join(', '),
          validFrom: new Date(cert.validFrom).toISOString(),
          validTo: new Date(cert.validTo).toISOString(),
          subjectAltName: cert.subjectAltName ?? '',
          ca: cert.ca,
        });
      }
      if (o.json) {
        process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
        return;
      }
      process.stdout.write(
        shown
          .map((s) =>
            formatFields([
              ['File', s.file],
              ['Role', s.ca ? 'certificate authority' : (s.role ?? 'none (no passthru identity)')],
              ...(s.node ? ([['Node', s.node]] as [string, string][]) : []),
              ...(s.initiator ? ([['Initiator', s.initiator]] as [string, string][]) : []),
              ['Subject', s.subject],
              ['Issuer', s.issuer],
              ['Valid', `${s.validFrom} to ${s.validTo}`],
              ['Alt names', s.subjectAltName || '-'],
            ]),
          )
          .join('\n'),
      );
    });

  usageExitCodes(program);
  return program;
}

export function main(argv: string[]): Promise<void> {
  return runProgram('passthru', buildProgram(), argv);
}
