/**
 * mTLS for passthru's TCP endpoints: the files a program is given (--tls-cert, --tls-key,
 * --tls-ca, or a `passthru pki init` directory), checked once at start-up so a wrong path or
 * a key that does not match its certificate is said plainly instead of failing every
 * handshake; then credentials for grpc-js servers and clients and options for node:tls and
 * node:http2. Servers require a client certificate signed by the CA; clients check that the
 * server's certificate names the host they dialled and carries the role they expect (the
 * array, the host agent), so another certificate of the same CA cannot stand in for it.
 * Without TLS nothing here is used: plaintext on loopback is the development mode.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { checkServerIdentity, type ConnectionOptions, type PeerCertificate } from 'node:tls';
import { credentials, ServerCredentials, type ChannelCredentials } from '@grpc/grpc-js';
import { InvalidArgumentError } from './errors.js';
import { identityOfCertificate, identityOfX509, type PeerIdentity, type Role } from './identity.js';

/** Where a program's certificate, key and CA certificate are (PEM files). */
export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
}

/** The loaded files. Never logged: `key` is a secret. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  /** Where the certificate came from, for messages. */
  certPath: string;
}

/**
 * The files `passthru pki init DIR` writes for one identity: DIR/<name>.crt, DIR/<name>.key
 * and DIR/ca.crt (`name` is array, host-agent, admin or nodes/<node>).
 */
export function pkiFiles(dir: string, name: string): TlsFiles {
  return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`), ca: join(dir, 'ca.crt') };
}

function read(path: string, flag: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(flag, `${flag} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

/**
 * Reads and checks the files: each parses, the key is the certificate's, and the CA signed
 * the certificate. Each problem names the flag to fix.
 */
export function loadTls(files: TlsFiles, flags = { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' }): TlsMaterial {
  const cert = read(files.cert, flags.cert);
  const key = read(files.key, flags.key);
  const ca = read(files.ca, flags.ca);
  let leaf: X509Certificate;
  let root: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch {
    throw new InvalidArgumentError(flags.cert, `${flags.cert} ${files.cert} is not a PEM certificate`);
  }
  try {
    root = new X509Certificate(ca);
  } catch {
    throw new InvalidArgumentError(flags.ca, `${flags.ca} ${files.ca} is not a PEM certificate`);
  }
  try {
    if (!leaf.checkPrivateKey(createPrivateKey(key))) throw new Error('mismatch');
  } catch {
    throw new InvalidArgumentError(flags.key, `${flags.key} ${files.key} is not the private key of ${flags.cert} ${files.cert}`);
  }
  if (!leaf.checkIssued(root) || !leaf.verify(root.publicKey)) {
    throw new InvalidArgumentError(flags.ca, `${flags.cert} ${files.cert} is not signed by the CA in ${flags.ca} ${files.ca}`);
  }
  return { cert, key, ca, certPath: files.cert };
}

/** Who the loaded certificate says its holder is (to check a program was given the right one). */
export function identityOfMaterial(tls: TlsMaterial): PeerIdentity {
  return identityOfX509(new X509Certificate(tls.cert));
}

/** A gRPC server's credentials: its certificate, and client certificates the CA signed required. */
export function serverCredentials(tls: TlsMaterial | undefined): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true);
}

// One function per role and host, so equal credentials compare equal and grpc-js shares connections.
const checkers = new Map<string, (host: string, cert: PeerCertificate) => Error | undefined>();

/**
 * Node's own host name check, then the role: the server must be the kind of program the
 * client meant to reach (undefined: any certificate of the CA, e.g. a test's reflection
 * client). `dialled`, when given, is the host checked whatever name the TLS layer passes.
 */
export function serverIdentityCheck(expect: Role | undefined, dialled?: string): (host: string, cert: PeerCertificate) => Error | undefined {
  const key = `${expect ?? '*'} ${dialled ?? ''}`;
  let check = checkers.get(key);
  if (!check) {
    check = (host, cert) => {
      const name = dialled ?? host;
      const err = checkServerIdentity(name, cert);
      if (err || expect === undefined) return err;
      const id = identityOfCertificate(cert);
      if (id?.role === expect) return undefined;
      return new Error(`the server at ${name} presented a certificate of role ${id?.role ?? 'none'} (${id?.subject ?? 'no subject'}), not the ${expect}'s`);
    };
    checkers.set(key, check);
  }
  return check;
}

/** What a grpc-js client needs for mTLS (common/client.ts `connect`). */
export interface GrpcClientTls {
  credentials: ChannelCredentials;
  options: Record<string, string>;
}

/** The host of a gRPC target: host:port, [v6]:port, dns:host:port, ipv4:/ipv6:host:port. */
function hostOf(endpoint: string): string {
  const bare = endpoint.replace(/^(dns:(\/\/[^/]*\/)?|ipv4:|ipv6:)/, '');
  const m = /^\[([^\]]+)\](?::\d+)?$/.exec(bare) ?? /^([^:]+)(?::\d+)?$/.exec(bare);
  return m ? m[1]! : bare;
}

// SNI may not carry an IP address (RFC 6066; Node warns when asked to): a client dialling
// one sends this name instead, and its certificate check still uses the address.
const SNI_FOR_IP = 'passthru.invalid';

/**
 * A grpc-js client's credentials and channel options for `endpoint`: plaintext without TLS;
 * with it, this client certificate, and the server's checked against the host dialled and `expect`.
 */
export function grpcClientTls(tls: TlsMaterial | undefined, endpoint: string, expect?: Role): GrpcClientTls {
  if (!tls) return { credentials: credentials.createInsecure(), options: {} };
  const host = hostOf(endpoint);
  const ip = isIP(host) !== 0;
  return {
    credentials: credentials.createSsl(tls.ca, tls.key, tls.cert, { checkServerIdentity: serverIdentityCheck(expect, ip ? host : undefined) }),
    options: ip ? { 'grpc.ssl_target_name_override': SNI_FOR_IP } : {},
  };
}

/** A client's mTLS: its certificate, and the role the server's must carry. */
export interface ClientTls {
  tls: TlsMaterial;
  serverRole?: Role;
}

/** node:tls / node:http2 client options for it. */
export function clientTlsOptions(c: ClientTls): ConnectionOptions {
  return { ca: c.tls.ca, cert: c.tls.cert, key: c.tls.key, checkServerIdentity: serverIdentityCheck(c.serverRole) };
}

/** The TLS flags a program takes (and, for the CLIs, their environment variables). */
export interface TlsFlags {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** A `passthru pki init` directory: its <pkiName>.crt/.key and ca.crt. */
  tlsDir?: string;
}

/**
 * The TLS a program was given: `--tls-dir` (the files of `pkiName` in it) or all three of
 * `--tls-cert`, `--tls-key`, `--tls-ca`; none of them means plaintext. With `role`, the
 * certificate must carry it (a server presenting another would fail every client's check).
 */
export function tlsFromFlags(o: TlsFlags, pkiName: string, role?: Role): TlsMaterial | undefined {
  const given = [o.tlsCert, o.tlsKey, o.tlsCa].filter((x) => x !== undefined && x !== '').length;
  let tls: TlsMaterial;
  if (o.tlsDir !== undefined && o.tlsDir !== '') {
    if (given > 0) throw new InvalidArgumentError('tls-dir', 'give --tls-dir or --tls-cert, --tls-key and --tls-ca, not both');
    const at = (f: string): string => `--tls-dir (${f})`;
    tls = loadTls(pkiFiles(o.tlsDir, pkiName), { cert: at(`${pkiName}.crt`), key: at(`${pkiName}.key`), ca: at('ca.crt') });
  } else if (given === 0) {
    return undefined;
  } else if (given < 3) {
    throw new InvalidArgumentError('tls-cert', '--tls-cert, --tls-key and --tls-ca go together: give all three, or --tls-dir');
  } else {
    tls = loadTls({ cert: o.tlsCert!, key: o.tlsKey!, ca: o.tlsCa! });
  }
  const id = identityOfMaterial(tls);
  if (role !== undefined && id.role !== role) {
    throw new InvalidArgumentError('tls-cert', `${tls.certPath} is a certificate of role ${id.role ?? 'none'}, not ${role}: give the ${role}'s (${pkiName}.crt of passthru pki init)`);
  }
  return tls;
}

/**
 * How an admin CLI's clients connect: the command's deadline, and mTLS with its certificate
 * (--tls-dir means the directory's admin.crt) when asked for, plaintext otherwise. Here, not
 * in common/cli.ts, so a CLI that never speaks TLS (guest-agent) does not load node:tls.
 */
export function cliConnection(o: TlsFlags & { endpoint: string; timeout: number }, serverRole?: Role): { timeoutMs: number; tls?: GrpcClientTls } {
  const tls = tlsFromFlags(o, 'admin');
  return { timeoutMs: o.timeout, tls: tls ? grpcClientTls(tls, o.endpoint, serverRole) : undefined };
}
