/**
 * bin/atmirror.js in a clone: it runs the TypeScript sources, never dist/ (even
 * when a build is there), and its Node floor is package.json's `engines.node`.
 * The installed package's side, and the old-Node answer, are in
 * test/package/package.test.ts.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'

const root = join(import.meta.dirname, '..', '..')
const launcher = join(root, 'bin', 'atmirror.js')

// prints every file: URL of this repository that the process loads, one per line on stderr
const trace = 'data:text/javascript,' + encodeURIComponent(`
  import { registerHooks } from 'node:module'
  registerHooks({ load (url, context, next) { if (url.startsWith(${JSON.stringify(new URL('../../', import.meta.url).href)})) process.stderr.write('loaded ' + url + '\\n'); return next(url, context) } })
`)

describe('bin/atmirror.js in a clone', () => {
  it('runs the TypeScript sources, not dist/', async () => {
    const { stdout, stderr } = await new Promise<{ stdout: string, stderr: string }>((resolve, reject) => {
      execFile(process.execPath, ['--import', trace, launcher, 'car', '--help'], { env: { ...process.env, DEBUG: '' } }, (err, stdout, stderr) => {
        if (err !== null) reject(err)
        else resolve({ stdout, stderr })
      })
    })
    assert.match(stdout, /atmirror car verify FILE\.car/)
    const loaded = stderr.split('\n').filter(line => line.startsWith('loaded ')).map(line => line.slice('loaded '.length).slice(new URL('../../', import.meta.url).href.length))
    assert.deepEqual(loaded.slice(0, 2), ['bin/atmirror.js', 'bin/atmirror.ts'])
    assert.ok(loaded.includes('bin/commands/car.ts'), loaded.join(', '))
    assert.deepEqual(loaded.filter(path => path.startsWith('dist/')), [])
  })

  it("checks the Node version that package.json's engines asks for", async () => {
    const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'))
    const source = await readFile(launcher, 'utf8')
    const need = /^var need = (\d+)$/m.exec(source)?.[1]
    assert.equal(pkg.engines.node, `>=${need}`)
    assert.equal(pkg.bin.atmirror, 'bin/atmirror.js')
  })
})
