import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { allocatedBytes, storeDiskUsage } from '../../src/mirror/disk-usage.ts'
import { repoBlocksDelta } from '../../src/mirror/gc.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { BLOCKSTORE_KINDS } from '../helpers/blocks.ts'
import { EvolvingRepo, posts, type RepoVersion } from '../helpers/evolving-repo.ts'

async function store (target: MirrorStore, version: RepoVersion): Promise<void> {
  const release = await target.beginWrite()
  try {
    await target.putBlocks(version.did, version.blocks)
    const delta = await repoBlocksDelta(target.blocks, version.commit)
    await target.commitRepo({ did: version.did, commit: version.commit.toString(), rev: version.rev, data: version.data.toString(), status: 'active', syncedAt: new Date().toISOString() }, delta, { pin: true, fresh: true })
  } finally {
    await release()
  }
}

for (const kind of BLOCKSTORE_KINDS) describe(`disk usage (${kind} store)`, () => {
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-du-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  it('counts each stored repo\'s blocks and bytes, a shared block in both, and the directory as du does', async () => {
    const target = await MirrorStore.open(join(root, 'data'), { blockstore: kind })
    try {
      const one = await (await EvolvingRepo.create(31, posts(50))).version()
      const two = await (await EvolvingRepo.create(32, posts(20))).version()
      await store(target, one)
      await store(target, two)
      const usage = await storeDiskUsage(target)
      assert.equal(usage.kind, kind)
      const bytes = (v: RepoVersion): number => v.blocks.reduce((n, b) => n + b.bytes.byteLength, 0)
      const byDid = new Map(usage.repos.map(repo => [repo.did, repo]))
      for (const version of [one, two]) {
        const repo = byDid.get(version.did)
        assert.ok(repo !== undefined, version.did)
        assert.equal(repo.blocks, version.blocks.length)
        assert.equal(repo.bytes, bytes(version))
        // level: the share of LevelDB's table files, where recent writes may not be yet
        assert.ok(kind === 'level' ? repo.disk >= 0 : repo.disk > 0)
      }
      // posts(n) share record blocks across repos: every stored block counted once here
      const distinct = new Map([...one.blocks, ...two.blocks].map(b => [b.cid.toString(), b.bytes.byteLength]))
      assert.equal(usage.blockBytes, [...distinct.values()].reduce((n, x) => n + x, 0))
      assert.equal(usage.total, await allocatedBytes(target.dir))
      if (kind === 'fs') assert.ok(usage.blocks > 0 && usage.blocks < usage.total)
      assert.equal(usage.other, Math.max(0, usage.total - usage.blocks - usage.blobFiles))
    } finally {
      await target.close()
    }
  })
})
