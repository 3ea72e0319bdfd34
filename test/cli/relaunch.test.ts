/**
 * bin/relaunch.ts: the bulk verbs run with their V8 flags and glibc's
 * allocator settings, in the same process (pid) after the exec; quick verbs start
 * once; flags the user gave are kept.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { V8_FLAGS } from '../../bin/relaunch.ts'

const cli = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')
// each start of the process prints its pid, V8 flags and allocator settings on stderr
const probe = 'data:text/javascript,' + encodeURIComponent(
  'process.stderr.write("start " + JSON.stringify({ pid: process.pid, execArgv: process.execArgv.filter(a => !a.startsWith("--import") && !a.startsWith("data:")), arenas: process.env.MALLOC_ARENA_MAX ?? null }) + "\\n")'
)

async function starts (args: string[], options: { nodeArgs?: string[], env?: NodeJS.ProcessEnv } = {}): Promise<Array<{ pid: number, execArgv: string[], arenas: string | null }>> {
  const { stderr } = await new Promise<{ stderr: string }>((resolve, reject) => {
    execFile(process.execPath, [...(options.nodeArgs ?? []), '--import', probe, cli, ...args], { env: { ...process.env, DEBUG: '', ...options.env } }, (err, _stdout, stderr) => {
      if (err !== null) reject(err)
      else resolve({ stderr })
    })
  })
  return stderr.split('\n').filter(line => line.startsWith('start ')).map(line => JSON.parse(line.slice('start '.length)))
}

describe('relaunch for bulk work', () => {
  it('runs a bulk verb again in the same process with the cap and the allocator settings', async () => {
    const seen = await starts(['mirror', '--help'])
    assert.equal(seen.length, 2)
    assert.equal(seen[1].pid, seen[0].pid)
    assert.deepEqual(seen[0].execArgv, [])
    assert.deepEqual(seen[1].execArgv, V8_FLAGS.map(({ name, value }) => `${name}=${value}`))
    assert.equal(seen[1].arenas, '2')
  })

  it('starts a quick verb once', async () => {
    const seen = await starts(['status', '--help'])
    assert.equal(seen.length, 1)
    assert.deepEqual(seen[0].execArgv, [])
  })

  it('keeps the flags and allocator settings that were given', async () => {
    const all = await starts(['verify', '--help'], { nodeArgs: ['--max-semi-space-size=4', '--heap-growing-percent=20'] })
    assert.equal(all.length, 1)
    const one = await starts(['verify', '--help'], { nodeArgs: ['--max-semi-space-size=4'] })
    assert.equal(one.length, 2)
    assert.deepEqual(one[1].execArgv, ['--heap-growing-percent=50', '--max-semi-space-size=4'])
    const withEnv = await starts(['verify', '--help'], { env: { MALLOC_ARENA_MAX: '4' } })
    assert.equal(withEnv.length, 2)
    assert.equal(withEnv[1].arenas, '4')
  })
})
