/**
 * The host agent's certificates under mTLS. It is a server (AdminService, with the
 * host-agent certificate; only admin certificates may call it) and, to the array, every node
 * of its cluster at once: each node's reservation commands and block portal session go with
 * that node's certificate, which binds the node's name and initiator, so the array lets each
 * act only as itself. Its other array calls (LUNs, igroups, maps, reads) go with any one
 * node's certificate.
 *
 * Where the files come from: `--tls-dir DIR` (a `passthru pki init` directory: host-agent.crt
 * and .key, ca.crt, nodes/<node>.crt and .key), or `--tls-cert`, `--tls-key`, `--tls-ca` for
 * AdminService with `--tls-node-dir DIR` holding <node>.crt and <node>.key.
 */
import { join } from 'node:path';
import { InvalidArgumentError } from '../common/errors.js';
import { requireRole } from '../common/identity.js';
import type { CallHooks } from '../common/rpc.js';
import { identityOfMaterial, loadTls, tlsFromFlags, type ClientTls, type TlsFlags, type TlsMaterial } from '../common/tls.js';

export interface HostAgentTlsFlags extends TlsFlags {
  tlsNodeDir?: string;
}

export interface HostAgentTls {
  /** AdminService's certificate (role host-agent) and the CA its clients' must chain to. */
  server: TlsMaterial;
  /** A node's certificate (role host-node), loaded and checked when first asked for. */
  node(name: string): TlsMaterial;
}

/** The TLS `host-agent serve` was given; undefined (plaintext) when none of the flags is. */
export function hostAgentTls(o: HostAgentTlsFlags): HostAgentTls | undefined {
  const server = tlsFromFlags(o, 'host-agent', 'host-agent');
  const explicit = o.tlsDir === undefined || o.tlsDir === '';
  if (!server) {
    if (o.tlsNodeDir) throw new InvalidArgumentError('tls-node-dir', '--tls-node-dir goes with --tls-cert, --tls-key and --tls-ca');
    return undefined;
  }
  if (explicit && !o.tlsNodeDir) throw new InvalidArgumentError('tls-node-dir', "with --tls-cert, --tls-key and --tls-ca, give --tls-node-dir: where each node's <node>.crt and <node>.key are");
  if (!explicit && o.tlsNodeDir) throw new InvalidArgumentError('tls-node-dir', '--tls-dir has the nodes in its nodes/ directory: give --tls-dir or --tls-node-dir, not both');
  const nodeDir = explicit ? o.tlsNodeDir! : join(o.tlsDir!, 'nodes');
  const caPath = explicit ? o.tlsCa! : join(o.tlsDir!, 'ca.crt');
  return {
    server,
    node: (name) =>
      loadTls(
        { cert: join(nodeDir, `${name}.crt`), key: join(nodeDir, `${name}.key`), ca: caPath },
        { cert: `node ${name}'s certificate`, key: `node ${name}'s key`, ca: 'the CA certificate' },
      ),
  };
}

/**
 * Each node's client identity toward the array, by initiator (lower case), after checking
 * that its certificate binds exactly that node and initiator: a certificate for another node
 * would have the array refuse (or, worse, accept) the wrong node's reservations.
 */
export function nodeIdentities(tls: HostAgentTls, nodes: Iterable<{ name: string; initiator: string }>): Map<string, ClientTls> {
  const out = new Map<string, ClientTls>();
  for (const n of nodes) {
    const material = tls.node(n.name);
    const id = identityOfMaterial(material);
    const initiator = n.initiator.toLowerCase();
    if (id.role !== 'host-node' || id.node !== n.name || id.initiator?.toLowerCase() !== initiator) {
      throw new InvalidArgumentError(
        'tls-node-dir',
        `${material.certPath} is not node ${n.name}'s certificate: it binds ${id.role === 'host-node' ? `node ${id.node} with initiator ${id.initiator}` : `role ${id.role ?? 'none'}`}, and the cluster has ${n.name} with ${n.initiator} (passthru pki init --cluster issues the right ones)`,
      );
    }
    out.set(initiator, { tls: material, serverRole: 'array' });
  }
  return out;
}

/** AdminService under mTLS: administrators only. */
export function adminAccessHooks(): CallHooks {
  return { before: (ctx) => void requireRole(`AdminService.${ctx.method}`, ['admin'], ctx.identity) };
}
