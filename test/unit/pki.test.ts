/**
 * `passthru pki init` as a library: the files and their modes, chains that verify (with
 * openssl when it is installed, else Node's own X509Certificate), the identities bound in
 * each certificate, re-runs that keep, add or refuse but never overwrite; and how an
 * identity is read from a certificate's alternative names.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DomainError } from '../../common/errors.js';
import { identityOfUris, identityOfX509 } from '../../common/identity.js';
import { initPki, type PkiFile } from '../../common/pki.js';
import { loadTls, pkiFiles } from '../../common/tls.js';

const NODES = [
  { name: 'node1', initiator: 'iqn.2026-11.dev.passthru:node1' },
  { name: 'node2', initiator: 'IQN.2026-11.dev.passthru:Node2' },
];
const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

async function refused(p: Promise<unknown>, kind: string, reason?: string): Promise<DomainError> {
  try {
    await p;
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(DomainError);
    expect((err as DomainError).kind, (err as Error).message).to.equal(kind);
    if (reason) expect((err as DomainError).reason).to.equal(reason);
    return err as DomainError;
  }
  throw new Error(`expected ${kind}, but pki init went through`);
}

/** Every file under dir with its bytes, to prove a refusal changed nothing. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name), `${rel}${e.name}/`);
      else out[`${rel}${e.name}`] = readFileSync(join(d, e.name), 'base64');
    }
  };
  walk(dir, '');
  return out;
}

const actions = (files: PkiFile[]): Record<string, string> => Object.fromEntries(files.map((f) => [f.path, f.action]));

describe('pki init', function () {
  this.timeout(30_000);
  let root: string;
  let dir: string;
  let first: PkiFile[];

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'passthru-pki-unit-'));
    dir = join(root, 'pki');
    first = await initPki({ dir, nodes: NODES, hosts: ['localhost', '127.0.0.1', '::1', 'array.lab.example'] });
  });

  after(() => rmSync(root, { recursive: true, force: true }));

  it('makes a CA and the array, host-agent, admin and node certificates; keys 0600 in directories 0700', () => {
    expect(actions(first)).to.deep.equal({
      'ca.crt': 'created',
      'array.crt': 'created',
      'host-agent.crt': 'created',
      'admin.crt': 'created',
      'nodes/node1.crt': 'created',
      'nodes/node2.crt': 'created',
    });
    const mode = (p: string): number => statSync(join(dir, p)).mode & 0o777;
    expect(mode('.')).to.equal(0o700);
    expect(mode('nodes')).to.equal(0o700);
    for (const name of ['ca', 'array', 'host-agent', 'admin', 'nodes/node1', 'nodes/node2']) {
      expect(mode(`${name}.key`), `${name}.key`).to.equal(0o600);
      expect(mode(`${name}.crt`), `${name}.crt`).to.equal(0o644);
      expect(readFileSync(join(dir, `${name}.key`), 'utf8')).to.match(/^-----BEGIN PRIVATE KEY-----\n/);
    }
    // No temporary file left beside them.
    expect(Object.keys(snapshot(dir)).filter((f) => f.endsWith('.tmp'))).to.deep.equal([]);
  });

  it('issues chains that verify, each key the certificate\'s', () => {
    const ca = new X509Certificate(readFileSync(join(dir, 'ca.crt')));
    expect(ca.ca).to.equal(true);
    for (const name of ['array', 'host-agent', 'admin', 'nodes/node1', 'nodes/node2']) {
      const cert = new X509Certificate(readFileSync(join(dir, `${name}.crt`)));
      expect(cert.ca, name).to.equal(false);
      expect(cert.verify(ca.publicKey), name).to.equal(true);
      expect(cert.checkIssued(ca), name).to.equal(true);
      // loadTls checks the key pairs with the certificate and the CA signed it.
      expect(() => loadTls(pkiFiles(dir, name)), name).to.not.throw();
    }
    if (hasOpenssl) {
      const out = execFileSync('openssl', ['verify', '-CAfile', join(dir, 'ca.crt'), ...['array', 'host-agent', 'admin', 'nodes/node1', 'nodes/node2'].map((n) => join(dir, `${n}.crt`))], { encoding: 'utf8' });
      expect(out.trim().split('\n')).to.have.length(5).and.satisfy((lines: string[]) => lines.every((l) => l.endsWith(': OK')));
      const purpose = execFileSync('openssl', ['verify', '-CAfile', join(dir, 'ca.crt'), '-purpose', 'sslserver', join(dir, 'array.crt')], { encoding: 'utf8' });
      expect(purpose.trim()).to.match(/: OK$/);
      const client = spawnSync('openssl', ['verify', '-CAfile', join(dir, 'ca.crt'), '-purpose', 'sslserver', join(dir, 'admin.crt')], { encoding: 'utf8' });
      expect(client.status, 'an admin certificate is no server certificate').to.not.equal(0);
    }
  });

  it('binds each identity: the role, and a node\'s name and initiator (canonical, lower case)', () => {
    const id = (name: string) => identityOfX509(new X509Certificate(readFileSync(join(dir, `${name}.crt`))));
    expect(id('array')).to.include({ role: 'array' });
    expect(id('host-agent')).to.include({ role: 'host-agent' });
    expect(id('admin')).to.deep.equal({ role: 'admin', subject: 'CN=admin, OU=admin, O=passthru' });
    expect(id('nodes/node1')).to.deep.include({ role: 'host-node', node: 'node1', initiator: 'iqn.2026-11.dev.passthru:node1' });
    expect(id('nodes/node2')).to.deep.include({ role: 'host-node', node: 'node2', initiator: 'iqn.2026-11.dev.passthru:node2' });
    const array = new X509Certificate(readFileSync(join(dir, 'array.crt')));
    for (const h of ['localhost', 'array.lab.example']) expect(array.checkHost(h), h).to.equal(h);
    for (const ip of ['127.0.0.1', '::1']) expect(array.checkIP(ip), ip).to.equal(ip);
    // A node's certificate is a client's only: it names no host.
    const node = new X509Certificate(readFileSync(join(dir, 'nodes/node1.crt')));
    expect(node.checkHost('localhost')).to.equal(undefined);
  });

  it('a second run keeps everything as it was', async () => {
    const before = snapshot(dir);
    const again = await initPki({ dir, nodes: NODES, hosts: ['localhost', 'array.lab.example'] });
    expect(new Set(again.map((f) => f.action))).to.deep.equal(new Set(['kept']));
    expect(snapshot(dir)).to.deep.equal(before);
  });

  it('a node added later gets its certificate, and nothing else changes', async () => {
    const before = snapshot(dir);
    const more = await initPki({ dir, nodes: [...NODES, { name: 'node3', initiator: 'iqn.2026-11.dev.passthru:node3' }] });
    expect(actions(more)['nodes/node3.crt']).to.equal('created');
    expect(more.filter((f) => f.action === 'created')).to.have.length(1);
    const after = snapshot(dir);
    for (const [f, bytes] of Object.entries(before)) expect(after[f], f).to.equal(bytes);
    expect(identityOfX509(new X509Certificate(readFileSync(join(dir, 'nodes/node3.crt'))))).to.include({ node: 'node3' });
  });

  it('refuses, changing nothing, a node whose certificate binds another initiator', async () => {
    const before = snapshot(dir);
    const err = await refused(
      initPki({ dir, nodes: [{ name: 'node1', initiator: 'iqn.2026-11.dev.passthru:impostor' }, { name: 'node9', initiator: 'iqn.2026-11.dev.passthru:node9' }] }),
      'failed_precondition',
      'PKI_IDENTITY_DIFFERS',
    );
    expect(err.message).to.contain('nodes/node1.crt').and.contain('iqn.2026-11.dev.passthru:node1').and.contain('remove');
    expect(snapshot(dir)).to.deep.equal(before);
  });

  it('refuses a server certificate that lacks a host asked for now', async () => {
    const before = snapshot(dir);
    const err = await refused(initPki({ dir, nodes: NODES, hosts: ['array2.lab.example'] }), 'failed_precondition', 'PKI_HOST_MISSING');
    expect(err.message).to.contain('array2.lab.example');
    expect(snapshot(dir)).to.deep.equal(before);
  });

  it('refuses a key without its certificate, never overwriting the key', async () => {
    const d = join(root, 'half');
    await initPki({ dir: d, nodes: NODES.slice(0, 1) });
    unlinkSync(join(d, 'admin.crt'));
    const key = readFileSync(join(d, 'admin.key'));
    await refused(initPki({ dir: d, nodes: NODES.slice(0, 1) }), 'failed_precondition', 'PKI_HALF_THERE');
    expect(readFileSync(join(d, 'admin.key')).equals(key)).to.equal(true);
  });

  it('refuses certificates without their CA instead of making a CA that did not sign them', async () => {
    const d = join(root, 'orphan');
    await initPki({ dir: d, nodes: NODES.slice(0, 1) });
    unlinkSync(join(d, 'ca.crt'));
    unlinkSync(join(d, 'ca.key'));
    await refused(initPki({ dir: d, nodes: NODES.slice(0, 1) }), 'failed_precondition', 'PKI_NO_CA');
    expect(readdirSync(d).filter((f) => f.startsWith('ca.'))).to.deep.equal([]);
  });

  it('refuses a certificate another CA signed', async () => {
    const d = join(root, 'mixed');
    const o = join(root, 'other');
    await Promise.all([initPki({ dir: d, nodes: NODES.slice(0, 1) }), initPki({ dir: o, nodes: NODES.slice(0, 1) })]);
    writeFileSync(join(d, 'admin.crt'), readFileSync(join(o, 'admin.crt')));
    await refused(initPki({ dir: d, nodes: NODES.slice(0, 1) }), 'failed_precondition', 'PKI_OTHER_CA');
  });

  it('refuses names a certificate cannot bind unambiguously', async () => {
    const d = join(root, 'bad');
    await refused(initPki({ dir: d, nodes: [{ name: 'node1', initiator: 'iqn.2026-11.dev.passthru:a,b' }] }), 'invalid_argument');
    await refused(initPki({ dir: d, nodes: [{ name: 'Node_1', initiator: 'iqn.2026-11.dev.passthru:n' }] }), 'invalid_argument');
    await refused(initPki({ dir: d, nodes: [...NODES, { name: 'node3', initiator: NODES[0]!.initiator }] }), 'invalid_argument');
    await refused(initPki({ dir: d, nodes: NODES, hosts: ['not a host'] }), 'invalid_argument');
  });
});

describe('identity from certificate names', () => {
  const S = 'CN=x';
  it('reads a role, and a node with exactly one name and initiator', () => {
    expect(identityOfUris(['urn:passthru:role:admin'], S)).to.deep.equal({ role: 'admin', subject: S });
    expect(identityOfUris(['urn:passthru:role:host-node', 'urn:passthru:node:n1', 'urn:passthru:initiator:iqn.2026-11.x:n1'], S)).to.deep.equal({
      role: 'host-node',
      subject: S,
      node: 'n1',
      initiator: 'iqn.2026-11.x:n1',
    });
  });

  it('gives no role to anything ambiguous or foreign', () => {
    const none = [
      [],
      ['urn:passthru:role:root'],
      ['urn:passthru:role:admin', 'urn:passthru:role:host-node'],
      ['urn:passthru:role:host-node', 'urn:passthru:node:n1'],
      ['urn:passthru:role:host-node', 'urn:passthru:node:n1', 'urn:passthru:initiator:a', 'urn:passthru:initiator:b'],
      ['urn:passthru:role:admin', 'urn:passthru:initiator:iqn.2026-11.x:n1'],
    ];
    for (const uris of none) expect(identityOfUris(uris, S).role, JSON.stringify(uris)).to.equal(undefined);
  });
});
