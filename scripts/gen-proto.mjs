#!/usr/bin/env node
// Regenerates proto/gen (ts-proto stubs and the descriptor set that server reflection
// serves) from proto/ and proto-vendor/. With --check, generates into a temporary directory
// and fails if the committed proto/gen differs: stale generated code never lands.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const buf = join(root, 'node_modules', '.bin', 'buf');
const check = process.argv.includes('--check');

function generate(base) {
  execFileSync(buf, ['generate', '--output', base], { cwd: root, stdio: 'inherit' });
  mkdirSync(join(base, 'proto', 'gen'), { recursive: true });
  // Imports included, so every file a served descriptor depends on is served too.
  execFileSync(buf, ['build', '--output', join(base, 'proto', 'gen', 'descriptors.binpb')], {
    cwd: root,
    stdio: 'inherit',
  });
}

function listFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...listFiles(full));
    else out.push(full);
  }
  return out;
}

if (!check) {
  rmSync(join(root, 'proto', 'gen'), { recursive: true, force: true });
  generate(root);
  process.exit(0);
}

const tmp = mkdtempSync(join(tmpdir(), 'passthru-proto-'));
try {
  generate(tmp);
  const fresh = join(tmp, 'proto', 'gen');
  const committed = join(root, 'proto', 'gen');
  const a = listFiles(fresh).map((f) => relative(fresh, f)).sort();
  const b = listFiles(committed).map((f) => relative(committed, f)).sort();
  const stale = [];
  for (const f of new Set([...a, ...b])) {
    if (!a.includes(f) || !b.includes(f)) stale.push(f);
    else if (!readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f)))) stale.push(f);
  }
  if (stale.length > 0) {
    console.error(`proto/gen is stale (run npm run proto): ${stale.join(', ')}`);
    process.exit(1);
  }
  console.log(`proto/gen is up to date (${a.length} files)`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
