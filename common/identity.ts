/**
 * Who is calling, as a client certificate of the passthru CA says (mTLS). The certificates
 * `passthru pki init` makes (common/pki.ts) carry the identity in their subject alternative
 * names, as URIs the CA signed, so a caller cannot claim another:
 *
 *   urn:passthru:role:<role>             exactly one: array, host-agent, host-node or admin
 *   urn:passthru:node:<name>             a host node's name (host-node only)
 *   urn:passthru:initiator:<initiator>   the node's initiator, an IQN (host-node only)
 *
 * The subject (CN=<name>, OU=<role>, O=passthru) is for people and logs only; nothing is
 * decided on it. A certificate with no role, two roles, or a host-node one without exactly
 * one node and one initiator has no passthru identity: it is refused every passthru API.
 */
import type { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { PermissionDeniedError } from './errors.js';

export const ROLES = ['array', 'host-agent', 'host-node', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export const ROLE_URI = 'urn:passthru:role:';
export const NODE_URI = 'urn:passthru:node:';
export const INITIATOR_URI = 'urn:passthru:initiator:';

export interface PeerIdentity {
  /** Undefined: the CA signed it, but it names no passthru identity (see above). */
  role: Role | undefined;
  /** The subject as one line, e.g. "CN=node1, OU=host-node, O=passthru": for logs. */
  subject: string;
  /** A host node's name. */
  node?: string;
  /** A host node's initiator, as the certificate spells it. */
  initiator?: string;
}

/** URI values of a subject alternative name list as Node prints it ("DNS:a, URI:b"). */
export function sanUris(subjectAltName: string | undefined): string[] {
  if (!subjectAltName) return [];
  // Node quotes a value holding a comma or quote (JSON style); ours never do, and a quoted
  // one is left out rather than half read.
  return subjectAltName
    .split(', ')
    .filter((part) => part.startsWith('URI:'))
    .map((part) => part.slice(4));
}

/** The identity a set of SAN URIs states (shared by the peer side and by `pki show`). */
export function identityOfUris(uris: readonly string[], subject: string): PeerIdentity {
  const values = (prefix: string): string[] => uris.filter((u) => u.startsWith(prefix)).map((u) => u.slice(prefix.length));
  const roles = values(ROLE_URI);
  const role = roles.length === 1 && (ROLES as readonly string[]).includes(roles[0]!) ? (roles[0] as Role) : undefined;
  const nodes = values(NODE_URI);
  const initiators = values(INITIATOR_URI);
  if (role === 'host-node') {
    if (nodes.length !== 1 || initiators.length !== 1 || nodes[0] === '' || initiators[0] === '') return { role: undefined, subject };
    return { role, subject, node: nodes[0], initiator: initiators[0] };
  }
  // Only a host node has a node and an initiator; another role with them is not ours.
  if (nodes.length > 0 || initiators.length > 0) return { role: undefined, subject };
  return { role, subject };
}

function subjectLine(subject: PeerCertificate['subject'] | undefined): string {
  if (!subject) return '';
  return Object.entries(subject)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`)
    .join(', ');
}

/**
 * The identity of a verified peer certificate (node:tls `getPeerCertificate()`, or grpc-js's
 * `getAuthContext().sslPeerCertificate`); undefined when there is none (plaintext).
 */
export function identityOfCertificate(cert: PeerCertificate | undefined): PeerIdentity | undefined {
  if (!cert || !cert.raw) return undefined;
  return identityOfUris(sanUris(cert.subjectaltname), subjectLine(cert.subject));
}

/** The identity a certificate states, read from the certificate itself (node:crypto). */
export function identityOfX509(cert: X509Certificate): PeerIdentity {
  return identityOfUris(sanUris(cert.subjectAltName), cert.subject.split('\n').join(', '));
}

/** "role node (subject)" for messages and audit lines. */
export function describeIdentity(id: PeerIdentity): string {
  if (id.role === undefined) return `a certificate with no passthru role (${id.subject})`;
  return id.node ? `${id.role} ${id.node}` : `${id.role} (${id.subject})`;
}

function articled(r: Role): string {
  return `${/^[aeiou]/.test(r) ? 'an' : 'a'} ${r}`;
}

/**
 * The caller, if its certificate carries one of `roles`; PERMISSION_DENIED naming what is
 * needed otherwise ("<what> needs an admin certificate; the caller is host-node node1").
 */
export function requireRole(what: string, roles: readonly Role[], id: PeerIdentity | undefined): PeerIdentity {
  // A TLS server refuses a connection without a verified certificate before any call; this
  // is the belt to those braces.
  if (!id) throw new PermissionDeniedError(`${what} came without a client certificate: connect with one the CA signed`, 'NO_CLIENT_CERTIFICATE');
  if (id.role !== undefined && roles.includes(id.role)) return id;
  const named = roles.length === 1 ? articled(roles[0]!) : `${roles.slice(0, -1).map(articled).join(', ')} or ${articled(roles.at(-1)!)}`;
  throw new PermissionDeniedError(`${what} needs ${named} certificate; the caller is ${describeIdentity(id)}`, 'ROLE_REQUIRED');
}
