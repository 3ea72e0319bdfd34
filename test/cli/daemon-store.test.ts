/**
 * Verbs that read the store next to a running daemon on the packed (level) store,
 * whose LevelDB the daemon alone can open: `block get --offline` asks the daemon
 * for what its store holds (never fetched: a block not stored is
 * BlockNotFoundError), and when the directory is held by a process with no control
 * API it fails with DataDirLockedError.
 */
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { MirrorStore } from '../../src/mirror/store.ts'
import { createMirrorNode } from '../../src/node.ts'
import { block } from '../helpers/blocks.ts'

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.ts')
const ENV = { ...process.env, ATMIRROR_PLC: 'http://127.0.0.1:9', DEBUG: '' }

async function atmirror (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: ENV, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (typeof err.code === 'number' ? err.code : 1), stdout, stderr })
    })
  })
}

/** Starts `atmirror daemon --offline` on `dir` and waits until it says it runs. */
async function startDaemon (dir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [CLI, 'daemon', '--offline', '--api', '0', '--interval', '0', '--no-follow', '--json', '--data', dir], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
      if (stdout.includes('"started"')) resolve()
    })
    child.once('exit', (code) => { reject(new Error(`daemon exited with ${code}: ${stderr}`)) })
  })
  return child
}

describe('store reads next to a running daemon (packed store)', () => {
  let root: string
  let dir: string
  const stored = block({ text: 'a block the daemon holds' })
  const absent = block({ text: 'a block nobody holds' })

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'atmirror-daemon-store-'))
    dir = join(root, 'data')
    const store = await MirrorStore.open(dir, { blockstore: 'level' })
    await store.blockstore.putVerified([stored])
    await store.close()
  })

  after(async () => {
    await rm(root, { recursive: true, force: true })
  })

  it('block get --offline reads the daemon\'s store through its control API; a block not stored is not found, not fetched', async () => {
    const daemon = await startDaemon(dir)
    try {
      const run = await atmirror(['block', 'get', stored.cid.toString(), '--offline', '--json', '--data', dir])
      assert.equal(run.code, 0, run.stderr)
      const out = JSON.parse(run.stdout) as { cid: string, size: number, base64: string }
      assert.equal(out.cid, stored.cid.toString())
      assert.ok(Buffer.from(out.base64, 'base64').equals(stored.bytes))
      const raw = await atmirror(['block', 'get', stored.cid.toString(), '--offline', '--data', dir])
      assert.equal(raw.code, 0, raw.stderr)
      assert.equal(Buffer.from(raw.stdout, 'latin1').byteLength, stored.bytes.byteLength)

      const missing = await atmirror(['block', 'get', absent.cid.toString(), '--offline', '--data', dir])
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, /\(BlockNotFoundError\)/)
      assert.doesNotMatch(missing.stderr, /DataDirLockedError/)
    } finally {
      const exited = once(daemon, 'exit')
      daemon.kill('SIGTERM')
      await exited
    }
  })

  it('block get --offline fails with DataDirLockedError when the directory is held by a process with no control API', async () => {
    const node = await createMirrorNode({ dataDir: dir, network: false, api: false, checkOnStart: false, intervalMs: 0 })
    try {
      const run = await atmirror(['block', 'get', stored.cid.toString(), '--offline', '--data', dir])
      assert.equal(run.code, 1)
      assert.match(run.stderr, /data directory is in use by another atmirror process.*\(DataDirLockedError\)/)
    } finally {
      await node.stop()
    }
    // free again: read directly
    const run = await atmirror(['block', 'get', stored.cid.toString(), '--offline', '--json', '--data', dir])
    assert.equal(run.code, 0, run.stderr)
  })
})
