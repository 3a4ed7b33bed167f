/** A `passthru pki init` directory made for a test, and its identities loaded as TLS material. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initPki, type PkiNode } from '../../common/pki.js';
import { loadTls, pkiFiles, type TlsMaterial } from '../../common/tls.js';

export interface TestPki {
  dir: string;
  /** array, host-agent, admin or nodes/<node>. */
  tls(name: string): TlsMaterial;
  remove(): void;
}

export async function makePki(nodes: PkiNode[], prefix = 'passthru-pki-'): Promise<TestPki> {
  const dir = join(mkdtempSync(join(tmpdir(), prefix)), 'pki');
  await initPki({ dir, nodes });
  return {
    dir,
    tls: (name) => loadTls(pkiFiles(dir, name)),
    remove: () => rmSync(join(dir, '..'), { recursive: true, force: true }),
  };
}
