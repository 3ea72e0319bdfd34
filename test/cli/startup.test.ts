/**
 * The quick verbs load only what they need: `--help`, `status` with no daemon and
 * `block get --offline` of a stored block never load the peer-to-peer stack, the
 * store's databases, blockstore-fs's glob machinery or prom-client. How fast they start is
 * bench/startup.ts's business; this keeps the module graph from growing back
 * behind it.
 */
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { settleBlockstoreKind } from '../../src/mirror/blockstore.ts'
import { FsMirrorBlockstore } from '../../src/mirror/fs-blockstore.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { block } from '../helpers/blocks.ts'

const launcher = join(import.meta.dirname, '..', '..', 'bin', 'atmirror.js')

// prints every module URL the process loads, one per line on stderr
const trace = 'data:text/javascript,' + encodeURIComponent(`
  import { registerHooks } from 'node:module'
  registerHooks({ load (url, context, next) { process.stderr.write('loaded ' + url + '\\n'); return next(url, context) } })
`)

/** Packages the quick verbs must not load. */
const HEAVY = /\/node_modules\/(libp2p|helia|prom-client|express|@atproto\/(?:xrpc-server|api|lexicon)|@helia\/[^/]+|@chainsafe\/[^/]+|@libp2p\/(?!logger\/)[^/]+|datastore-level|level|classic-level|fast-glob|it-glob|did-resolver|@ipld\/car)\//
/** What a read of the packed store may not load either: it needs LevelDB, nothing else of the store's. */
const HEAVY_BUT_LEVELDB = /\/node_modules\/(libp2p|helia|prom-client|express|@atproto\/(?:xrpc-server|api|lexicon)|@helia\/[^/]+|@chainsafe\/[^/]+|@libp2p\/(?!logger\/)[^/]+|blockstore-level|blockstore-fs\/dist\/src\/index|fast-glob|it-glob|did-resolver|@ipld\/car)\//

async function loads (args: string[]): Promise<{ code: number, stdout: string, loaded: string[] }> {
  return await new Promise(resolve => {
    execFile(process.execPath, ['--import', trace, launcher, ...args], { env: { ...process.env, DEBUG: '' }, encoding: 'buffer' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      const loaded = stderr.toString('utf8').split('\n').filter(line => line.startsWith('loaded ')).map(line => line.slice('loaded '.length))
      resolve({ code, stdout: stdout.toString('latin1'), loaded })
    })
  })
}

describe('what the quick verbs load', () => {
  let dir: string
  let stored: ReturnType<typeof block>

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'atmirror-startup-'))
    stored = block({ text: 'a stored block' })
    await mkdir(join(dir, 'data'))
    settleBlockstoreKind(join(dir, 'data'), 'fs')
    const blockstore = new FsMirrorBlockstore(join(dir, 'data', 'blocks'))
    await blockstore.open()
    await blockstore.putVerified([stored])
    await blockstore.close()
    const packed = await MirrorStore.open(join(dir, 'packed'), { blockstore: 'level' })
    await packed.blockstore.putVerified([stored])
    await packed.close()
  })

  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('--help loads no package at all', async () => {
    const run = await loads(['--help'])
    assert.equal(run.code, 0)
    assert.deepEqual(run.loaded.filter(url => url.includes('/node_modules/')), [])
  })

  it('status with no daemon loads no networking and no store', async () => {
    const run = await loads(['status', '--data', join(dir, 'empty')])
    assert.equal(run.code, 1)
    assert.ok(run.loaded.some(url => url.endsWith('/bin/commands/status.ts')), 'status.ts was not loaded')
    assert.deepEqual(run.loaded.filter(url => HEAVY.test(url)), [])
  })

  it('block get --offline of a block in the packed store loads LevelDB and nothing else heavy', async () => {
    const run = await loads(['block', 'get', stored.cid.toString(), '--offline', '--data', join(dir, 'packed')])
    assert.equal(run.code, 0)
    assert.equal(Buffer.compare(Buffer.from(run.stdout, 'latin1'), stored.bytes), 0)
    assert.ok(run.loaded.some(url => url.includes('/node_modules/classic-level/')), 'classic-level was not loaded')
    assert.deepEqual(run.loaded.filter(url => HEAVY_BUT_LEVELDB.test(url) || url.endsWith('/bin/commands/backend.ts') || url.endsWith('/src/mirror/level-blockstore.ts') || url.endsWith('/src/mirror/store.ts')), [])
  })

  it('block get --offline of a stored block reads its file and loads nothing else heavy', async () => {
    const run = await loads(['block', 'get', stored.cid.toString(), '--offline', '--data', join(dir, 'data')])
    assert.equal(run.code, 0)
    assert.equal(Buffer.compare(Buffer.from(run.stdout, 'latin1'), stored.bytes), 0)
    assert.deepEqual(run.loaded.filter(url => HEAVY.test(url) || url.endsWith('/bin/commands/backend.ts') || url.endsWith('/src/mirror/fs-blockstore.ts') || url.endsWith('/src/mirror/level-blockstore.ts')), [])
  })
})
