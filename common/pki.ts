/**
 * A local certificate authority for passthru's mTLS (`passthru pki init DIR`): a CA, then a
 * certificate for the array, the host agent, each host node and an admin, each with its
 * identity in subject alternative name URIs (common/identity.ts). Keys are ECDSA P-256,
 * made by Node's own crypto (WebCrypto); @peculiar/x509 builds and signs the certificates,
 * which Node cannot do by itself.
 *
 * DIR after a run:
 *   ca.crt ca.key                       the CA (keep ca.key off the servers)
 *   array.crt array.key                 storage-sim's server certificate (role array)
 *   host-agent.crt host-agent.key       host-agent's AdminService certificate (role host-agent)
 *   admin.crt admin.key                 an administrator's client certificate (role admin)
 *   nodes/<node>.crt nodes/<node>.key   each host node's client certificate (role host-node,
 *                                       its name and initiator bound in it)
 *
 * Running it again is additive and never overwrites: what exists is kept when it says what
 * is asked (so a node added to the cluster file gets its certificate and nothing else
 * changes), and a file that says something else (another initiator, another CA, a missing
 * host name, a key without its certificate) is refused with what to remove. Keys are
 * written 0600, in directories 0700, each file created exclusively.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { basename, join } from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from './errors.js';
import { identityOfX509, INITIATOR_URI, NODE_URI, ROLE_URI, type PeerIdentity, type Role } from './identity.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
export const DEFAULT_CA_DAYS = 3650;
export const DEFAULT_DAYS = 825;
export const DEFAULT_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '::1'];

const NODE_NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
// RFC 3720's characters for iSCSI names (after lower-casing): all of them are safe in a URI.
const IQN_RE = /^iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[a-z0-9.:-]+)?$/;
const EUI_RE = /^eui\.[0-9a-f]{16}$/;
const HOST_RE = /^(?=.{1,253}$)[a-z0-9*]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

export interface PkiNode {
  name: string;
  initiator: string;
}

export interface PkiInitOptions {
  dir: string;
  nodes: readonly PkiNode[];
  /** DNS names and IP addresses the array and host agent are reached at (default localhost and loopback). */
  hosts?: readonly string[];
  /** Validity of the certificates issued now (the CA's is ten years). */
  days?: number;
  /** Names the CA, e.g. after the cluster. */
  caName?: string;
}

export interface PkiFile {
  /** Relative to DIR, e.g. nodes/node1.crt. */
  path: string;
  identity: string;
  /** created now, or kept as it was. */
  action: 'created' | 'kept';
}

interface Wanted {
  /** File name without extension, relative to DIR. */
  name: string;
  role: Role;
  cn: string;
  node?: PkiNode;
  server: boolean;
}

/** A node as a certificate binds it; refused unless its name and initiator fit in one unambiguously. */
export function checkPkiNode(n: PkiNode): PkiNode {
  if (!NODE_NAME_RE.test(n.name)) throw new InvalidArgumentError('node', `node name ${JSON.stringify(n.name)} must be 1-63 lower-case letters, digits and hyphens`);
  const initiator = n.initiator.trim().toLowerCase();
  if (!IQN_RE.test(initiator) && !EUI_RE.test(initiator)) {
    throw new InvalidArgumentError(
      'node',
      `node ${n.name}: initiator ${JSON.stringify(n.initiator)} must be an iSCSI name (iqn.YYYY-MM.domain[:name] of letters, digits, '.', '-', ':', or eui. and 16 hex digits) to be bound in a certificate`,
    );
  }
  return { name: n.name, initiator };
}

function checkHost(h: string): string {
  if (isIP(h) === 0 && !HOST_RE.test(h)) throw new InvalidArgumentError('host', `--host ${JSON.stringify(h)} is neither a DNS name nor an IP address`);
  return isIP(h) === 0 ? h.toLowerCase() : h;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').match(/.{1,64}/g)!.join('\n');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** Creates `path` with `data`, never replacing a file there: written aside, then hard-linked in. */
function createExclusive(path: string, data: string, mode: number): void {
  const aside = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(aside, data, { mode, flag: 'wx' });
  try {
    chmodSync(aside, mode);
    linkSync(aside, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new FailedPreconditionError(`${path} appeared while it was being written: nothing was overwritten; run again`, 'PKI_FILE_EXISTS');
    throw err;
  } finally {
    unlinkSync(aside);
  }
}

function serverNames(hosts: readonly string[]): x509.JsonGeneralName[] {
  return hosts.map((h) => ({ type: isIP(h) === 0 ? 'dns' : 'ip', value: h }) as x509.JsonGeneralName);
}

/** What a certificate of `w` must say; a kept one is compared against it. */
function wantedUris(w: Wanted): string[] {
  const uris = [`${ROLE_URI}${w.role}`];
  if (w.node) uris.push(`${NODE_URI}${w.node.name}`, `${INITIATOR_URI}${w.node.initiator}`);
  return uris;
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function exportKey(key: CryptoKey): Promise<string> {
  return pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', key));
}

interface Ca {
  cert: x509.X509Certificate;
  key: CryptoKey;
  node: X509Certificate;
}

async function loadCa(dir: string): Promise<Ca> {
  const certPem = readFileSync(join(dir, 'ca.crt'), 'utf8');
  const keyPem = readFileSync(join(dir, 'ca.key'), 'utf8');
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  let key: CryptoKey;
  try {
    key = await webcrypto.subtle.importKey('pkcs8', der, KEY_ALGORITHM, false, ['sign']);
  } catch {
    throw new FailedPreconditionError(`${join(dir, 'ca.key')} is not an ECDSA P-256 private key in PKCS#8 PEM: it was not made by passthru pki init`, 'PKI_CA_KEY');
  }
  const node = new X509Certificate(certPem);
  if (!node.ca) throw new FailedPreconditionError(`${join(dir, 'ca.crt')} is not a CA certificate`, 'PKI_CA_CERT');
  return { cert: new x509.X509Certificate(certPem), key, node };
}

async function createCa(dir: string, name: string): Promise<Ca> {
  const keys = await generateKeys();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${name}, O=passthru`,
    keys,
    signingAlgorithm: KEY_ALGORITHM,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + DEFAULT_CA_DAYS * DAY_MS),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  // The key first: a crash between the two leaves a key without a certificate, which the
  // next run refuses by name rather than making a second CA beside certificates of the first.
  createExclusive(join(dir, 'ca.key'), await exportKey(keys.privateKey), 0o600);
  createExclusive(join(dir, 'ca.crt'), cert.toString('pem'), 0o644);
  return { cert, key: keys.privateKey, node: new X509Certificate(cert.toString('pem')) };
}

async function issue(dir: string, ca: Ca, w: Wanted, hosts: readonly string[], days: number): Promise<void> {
  const keys = await generateKeys();
  const now = Date.now();
  const names: x509.JsonGeneralName[] = wantedUris(w).map((value) => ({ type: 'url', value }));
  if (w.server) names.push(...serverNames(hosts));
  const usages = w.server ? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.clientAuth];
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${w.cn}, OU=${w.role}, O=passthru`,
    issuer: ca.cert.subject,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    signingAlgorithm: KEY_ALGORITHM,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + days * DAY_MS),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  createExclusive(join(dir, `${w.name}.key`), await exportKey(keys.privateKey), 0o600);
  createExclusive(join(dir, `${w.name}.crt`), cert.toString('pem'), 0o644);
}

/** Refuses a kept certificate that does not say what this run asks of it. */
function checkKept(dir: string, ca: Ca, w: Wanted, hosts: readonly string[]): PeerIdentity {
  const path = join(dir, `${w.name}.crt`);
  const cert = new X509Certificate(readFileSync(path));
  const redo = `remove ${w.name}.crt and ${w.name}.key to issue it again`;
  if (!cert.checkIssued(ca.node) || !cert.verify(ca.node.publicKey)) {
    throw new FailedPreconditionError(`${path} is not signed by ${join(dir, 'ca.crt')}: ${redo}`, 'PKI_OTHER_CA');
  }
  const id = identityOfX509(cert);
  const want = wantedUris(w);
  const has = (cert.subjectAltName ?? '').split(', ');
  for (const uri of want) {
    if (!has.includes(`URI:${uri}`)) {
      const said = id.initiator && w.node && id.initiator !== w.node.initiator ? ` (it binds initiator ${id.initiator}, asked: ${w.node.initiator})` : '';
      throw new FailedPreconditionError(`${path} does not carry ${uri}${said}: ${redo}`, 'PKI_IDENTITY_DIFFERS');
    }
  }
  if (w.server) {
    for (const h of hosts) {
      if (!(isIP(h) === 0 ? cert.checkHost(h) : cert.checkIP(h))) throw new FailedPreconditionError(`${path} does not name host ${h}: ${redo} with every --host`, 'PKI_HOST_MISSING');
    }
  }
  return id;
}

/** Makes (or completes) the CA directory; see the top of this file. */
export async function initPki(opts: PkiInitOptions): Promise<PkiFile[]> {
  const days = opts.days ?? DEFAULT_DAYS;
  if (!Number.isInteger(days) || days < 1 || days > DEFAULT_CA_DAYS) throw new InvalidArgumentError('days', `--days must be a whole number from 1 to ${DEFAULT_CA_DAYS}`);
  const hosts = [...new Set((opts.hosts && opts.hosts.length > 0 ? opts.hosts : DEFAULT_HOSTS).map(checkHost))];
  const nodes = opts.nodes.map(checkPkiNode);
  const seen = new Map<string, string>();
  for (const n of nodes) {
    if (seen.has(n.name)) throw new InvalidArgumentError('node', `node ${n.name} is given twice`);
    if ([...seen.values()].includes(n.initiator)) throw new InvalidArgumentError('node', `initiator ${n.initiator} is given to two nodes`);
    seen.set(n.name, n.initiator);
  }
  const dir = opts.dir;
  mkdirSync(join(dir, 'nodes'), { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  chmodSync(join(dir, 'nodes'), 0o700);

  const out: PkiFile[] = [];
  const present = (name: string): boolean => {
    const crt = existsSync(join(dir, `${name}.crt`));
    const key = existsSync(join(dir, `${name}.key`));
    if (crt !== key) {
      const [there, missing] = crt ? ['crt', 'key'] : ['key', 'crt'];
      throw new FailedPreconditionError(`${join(dir, name)}.${there} exists without ${name}.${missing}: remove it to issue it again (nothing was overwritten)`, 'PKI_HALF_THERE');
    }
    return crt;
  };

  const wanted: Wanted[] = [
    { name: 'array', role: 'array', cn: 'array', server: true },
    { name: 'host-agent', role: 'host-agent', cn: 'host-agent', server: true },
    { name: 'admin', role: 'admin', cn: 'admin', server: false },
    ...nodes.map((n) => ({ name: `nodes/${n.name}`, role: 'host-node' as const, cn: n.name, node: n, server: false })),
  ];
  let ca: Ca;
  const caThere = present('ca');
  if (caThere) ca = await loadCa(dir);
  else {
    const orphan = wanted.find((w) => present(w.name));
    if (orphan) throw new FailedPreconditionError(`${join(dir, orphan.name)}.crt exists but ${join(dir, 'ca.crt')} does not: a new CA would not have signed it; use another directory or remove the old files`, 'PKI_NO_CA');
    ca = await createCa(dir, opts.caName ?? `passthru CA ${basename(dir)}`);
  }
  out.push({ path: 'ca.crt', identity: ca.node.subject.split('\n').join(', '), action: caThere ? 'kept' : 'created' });

  // Everything kept is checked before anything is issued, so a refusal changes nothing.
  const kept = new Map<string, PeerIdentity>();
  for (const w of wanted) if (present(w.name)) kept.set(w.name, checkKept(dir, ca, w, hosts));
  for (const w of wanted) {
    if (!kept.has(w.name)) await issue(dir, ca, w, hosts, days);
    const identity = w.node ? `${w.role} ${w.node.name} ${w.node.initiator}` : w.role;
    out.push({ path: `${w.name}.crt`, identity, action: kept.has(w.name) ? 'kept' : 'created' });
  }
  return out;
}
