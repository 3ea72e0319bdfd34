/**
 * `atmirror du` on a data directory of each blockstore kind: the bytes on disk in
 * all and per stored repo, and a refusal when the kind asked for is not the one the
 * directory has.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { allocatedBytes } from '../../src/mirror/disk-usage.ts'
import { repoBlocksDelta } from '../../src/mirror/gc.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { BLOCKSTORE_KINDS } from '../helpers/blocks.ts'
import { EvolvingRepo, posts } from '../helpers/evolving-repo.ts'

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

describe('atmirror du', () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-du-cli-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  for (const kind of BLOCKSTORE_KINDS) {
    it(`reports the ${kind} store's bytes on disk and each repo's blocks`, async () => {
      const dir = join(root, kind)
      const version = await (await EvolvingRepo.create(41, posts(30))).version()
      const store = await MirrorStore.open(dir, { blockstore: kind })
      try {
        const release = await store.beginWrite()
        await store.putBlocks(version.did, version.blocks)
        await store.commitRepo({ did: version.did, commit: version.commit.toString(), rev: version.rev, data: version.data.toString(), status: 'active', syncedAt: new Date().toISOString() }, await repoBlocksDelta(store.blocks, version.commit), { pin: true, fresh: true })
        await release()
      } finally {
        await store.close()
      }
      const { stdout } = await pexec(process.execPath, [CLI, 'du', '--data', dir, '--json'], { env: { ...process.env, DEBUG: '' } })
      const usage = JSON.parse(stdout)
      assert.equal(usage.ok, true)
      assert.equal(usage.kind, kind)
      assert.ok(usage.total > 0 && usage.total >= await allocatedBytes(join(dir, 'datastore')))
      assert.equal(usage.repos.length, 1)
      assert.equal(usage.repos[0].did, version.did)
      assert.equal(usage.repos[0].blocks, version.blocks.length)
      assert.equal(usage.repos[0].bytes, version.blocks.reduce((n, b) => n + b.bytes.byteLength, 0))
      const text = await pexec(process.execPath, [CLI, 'du', '--data', dir], { env: { ...process.env, DEBUG: '' } })
      assert.match(text.stdout, new RegExp(`\\(${kind} blockstore\\)`))
      assert.match(text.stdout, new RegExp(`${version.did}  blocks=${version.blocks.length}  bytes=`))
    })
  }

  it('refuses a --blockstore that is not the directory\'s kind, with a hint', async () => {
    const dir = join(root, 'fs')
    const run = await pexec(process.execPath, [CLI, 'du', '--data', dir, '--blockstore', 'level'], { env: { ...process.env, DEBUG: '' } }).catch((err: { code: number, stderr: string }) => err)
    assert.equal((run as { code: number }).code, 1)
    assert.match((run as { stderr: string }).stderr, /data directory uses the fs blockstore, not level; .*\(BlockstoreKindError\)/)
    assert.match((run as { stderr: string }).stderr, /hint: a data directory keeps the blockstore it was made with/)
  })
})
