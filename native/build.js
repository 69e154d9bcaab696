#!/usr/bin/env node
// Builds the native addon offline with cmake-js (used by the "install" and "build:native" scripts).
//
// cmake-js downloads Node's headers into ~/.cmake-js unless npm's `nodedir` points at a local
// Node installation (it reads npm_config_nodedir). We point it at the headers of the node that
// runs this script (<prefix>/include/node, e.g. /usr/include/node), so no download ever happens.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const hasHeaders = (dir) =>
  !!dir &&
  fs.existsSync(path.join(dir, 'include', 'node', 'node.h')) &&
  fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h')) &&
  fs.existsSync(path.join(dir, 'include', 'node', 'uv.h'));

const env = { ...process.env };
if (!hasHeaders(env.npm_config_nodedir)) {
  const candidates = [path.resolve(path.dirname(fs.realpathSync(process.execPath)), '..'), '/usr', '/usr/local'];
  const found = candidates.find(hasHeaders);
  if (!found) {
    console.error(
      'native/build.js: Node headers (include/node/node_api.h, uv.h) not found next to ' +
        process.execPath + ' nor in /usr or /usr/local; install them or set npm_config_nodedir.',
    );
    process.exit(1);
  }
  env.npm_config_nodedir = found;
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
// node-addon-api (header-only) where Node finds it from here: this package's node_modules in a
// checkout, the installing project's node_modules when elastic-vhost is installed as a dependency
// (npm hoists it there, where CMakeLists.txt's own guess, <root>/node_modules, does not look)
let addonApi;
try {
  addonApi = path.dirname(require.resolve('node-addon-api/package.json', { paths: [root] }));
} catch (e) {
  console.error(`native/build.js: node-addon-api not found from ${root}: ${e.message}`);
  process.exit(1);
}
const args = [
  cmakeJs, 'compile', '--directory', root, '--out', path.join(root, 'build', 'native'),
  `--CDNODE_ADDON_API_DIR=${addonApi}`,
  ...process.argv.slice(2),
];
const r = spawnSync(process.execPath, args, { stdio: 'inherit', env, cwd: root });
if (r.error) {
  console.error(`native/build.js: cannot run cmake-js: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status === null ? 1 : r.status);
