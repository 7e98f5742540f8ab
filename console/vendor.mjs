// Reproduces the console's vendored browser code from the pinned npm packages:
//   npm ci && npm run vendor      writes dso/api/static/vendor/
//   npm run check                 exits 1 if the committed copies differ from a fresh build
// The output is committed, so installing the Python package needs neither Node nor npm.
import { build } from 'esbuild';
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const vendorDir = join(here, '..', 'dso', 'api', 'static', 'vendor');
const checkOnly = process.argv.includes('--check');
const threeVersion = JSON.parse(readFileSync(join(here, 'node_modules', 'three', 'package.json'), 'utf8')).version;

const bundle = await build({
  entryPoints: [join(here, 'src', 'three-viewer.js')],
  bundle: true,
  format: 'esm',
  minify: true,
  target: 'es2020',
  legalComments: 'none', // the licence ships next to the bundle (three-LICENSE.txt) ...
  banner: { js: `/* three.js r${threeVersion.split('.')[1]} (npm three@${threeVersion}), MIT licence: see three-LICENSE.txt. Built by console/vendor.mjs. */` },
  write: false,
  logLevel: 'warning',
});
const outputs = {
  'three-viewer.min.js': bundle.outputFiles[0].contents,
  'three-LICENSE.txt': readFileSync(join(here, 'node_modules', 'three', 'LICENSE')),
};

const stale = [];
mkdirSync(vendorDir, { recursive: true });
for (const [name, bytes] of Object.entries(outputs)) {
  const target = join(vendorDir, name);
  if (checkOnly) {
    let current = null;
    try { current = readFileSync(target); } catch { /* missing counts as stale */ }
    if (!current || Buffer.compare(current, Buffer.from(bytes)) !== 0) stale.push(name);
  } else {
    writeFileSync(target, bytes);
    console.log(`wrote ${target} (${bytes.length} bytes)`);
  }
}
if (checkOnly) {
  if (stale.length) { console.error(`stale vendored files: ${stale.join(', ')} (run npm run vendor)`); process.exit(1); }
  console.log('vendored files match a fresh build');
}
