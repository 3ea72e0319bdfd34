// Rebuilds native test dependencies against the pinned Node's own headers; run by
// `npm test` (its `pretest` script), never by an install of the package.
// npm on some machines points `nodedir` at another Node's headers, and prebuilt
// binaries cannot be downloaded everywhere, so better-sqlite3 (needed only by the
// reference PDS used in tests) may be compiled for the wrong ABI. This checks,
// in a child process (a failed dlopen is cached per process), whether it loads
// under the running Node, and rebuilds it if not.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

const root = process.cwd()

function loads () {
  const probe = "const D = require('better-sqlite3'); new D(':memory:').close()"
  const result = spawnSync(process.execPath, ['-e', probe], { cwd: root, encoding: 'utf8' })
  return result.status === 0 ? true : (result.stderr.split('\n').find(line => /Error/.test(line)) ?? result.stderr.trim())
}

if (!existsSync(join(root, 'node_modules', 'better-sqlite3', 'package.json'))) {
  process.exit(0) // a production install without devDependencies: nothing to do
}

const first = loads()
if (first === true) process.exit(0)

const headers = join(root, 'node_modules', 'node', 'node_modules', `node-${process.platform}-${process.arch}`)
const env = { ...process.env }
if (existsSync(join(headers, 'include', 'node', 'node.h'))) env.npm_config_nodedir = headers
else delete env.npm_config_nodedir
console.error(`rebuilding better-sqlite3 for node ${process.version}: ${first}`)
execFileSync('npm', ['rebuild', 'better-sqlite3'], { stdio: 'inherit', env, cwd: root })
const again = loads()
if (again !== true) {
  console.error(`better-sqlite3 still fails to load under node ${process.version}: ${again}`)
  process.exit(1)
}
