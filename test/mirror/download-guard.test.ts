/**
 * DownloadGuard on a real repo's blocks, no network: what counts as reachable, how
 * blocks that arrive before their parent leave the allowance again, and each limit
 * throwing DownloadLimitError before the block that would pass it is admitted.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { before, describe, it } from 'node:test'
import { DownloadGuard, type DownloadLimits } from '../../src/mirror/download-guard.ts'
import type { Block } from '../../src/repo/block-store.ts'
import { cidForBytes, cidKey, RAW } from '../../src/repo/cid.ts'
import { splitCar } from '../helpers/car-tools.ts'
import { EvolvingRepo, posts, type RepoVersion } from '../helpers/evolving-repo.ts'

const junk = (): Block => {
  const bytes = randomBytes(64)
  return { cid: cidForBytes(bytes, RAW), bytes }
}

describe('DownloadGuard', () => {
  let repo: EvolvingRepo
  let version: RepoVersion
  let blocks: Block[]

  before(async () => {
    repo = await EvolvingRepo.create(71, posts(80))
    version = await repo.version()
    blocks = splitCar(version.car).blocks
  })

  const guardFor = (limits: DownloadLimits, written: Map<string, Uint8Array>): DownloadGuard => new DownloadGuard({
    did: version.did,
    key: repo.key,
    head: { cid: version.commit, data: version.data },
    limits,
    read: (cid) => written.get(cidKey(cid))
  })

  it('a repo in tree order is reachable block by block: nothing waits', () => {
    const written = new Map<string, Uint8Array>()
    const guard = guardFor({ unreachableBlocks: 0 }, written)
    for (const block of blocks) {
      guard.admit(block, version.commit)
      written.set(cidKey(block.cid), block.bytes)
    }
    assert.equal(guard.unreachable, 0)
    assert.equal(guard.blocks, blocks.length)
  })

  it('children before their parents wait within the allowance and leave it when the parent arrives', () => {
    const written = new Map<string, Uint8Array>()
    const guard = guardFor({}, written)
    let most = 0
    for (const block of [...blocks].reverse()) {
      guard.admit(block, version.commit)
      written.set(cidKey(block.cid), block.bytes)
      most = Math.max(most, guard.unreachable)
    }
    assert.ok(most > 0, 'some blocks waited')
    assert.equal(guard.unreachable, 0)
  })

  it('junk is never reachable: the block past the allowance is refused', () => {
    const guard = guardFor({ unreachableBlocks: 10 }, new Map())
    for (const block of blocks) guard.admit(block, version.commit)
    for (let i = 0; i < 10; i++) guard.admit(junk(), version.commit)
    assert.equal(guard.unreachable, 10)
    assert.throws(() => { guard.admit(junk(), version.commit) }, (err: Error & { limit?: string, max?: number }) =>
      err.name === 'DownloadLimitError' && err.limit === 'unreachableBlocks' && err.max === 10)
  })

  it('the allowance in bytes', () => {
    const guard = guardFor({ unreachableBytes: 200 }, new Map())
    guard.admit(junk(), undefined)
    guard.admit(junk(), undefined)
    guard.admit(junk(), undefined)
    assert.throws(() => { guard.admit(junk(), undefined) }, { name: 'DownloadLimitError', limit: 'unreachableBytes' } as object)
  })

  it('maxBlocks and maxBytes count every block, reachable or not', () => {
    const byCount = guardFor({ maxBlocks: 5 }, new Map())
    for (const block of blocks.slice(0, 5)) byCount.admit(block, version.commit)
    assert.throws(() => { byCount.count(blocks[5]) }, { name: 'DownloadLimitError', limit: 'maxBlocks' } as object)
    const byBytes = guardFor({ maxBytes: 1000 }, new Map())
    assert.throws(() => { for (const block of blocks) byBytes.admit(block, version.commit) }, { name: 'DownloadLimitError', limit: 'maxBytes' } as object)
  })

  it('a CAR root signed by another key does not count as a commit', async () => {
    const forged = await (await EvolvingRepo.create(71, posts(80), { keySeed: 5 })).version()
    const guard = guardFor({ unreachableBlocks: 1_000 }, new Map())
    for (const block of splitCar(forged.car).blocks) guard.admit(block, forged.commit)
    // every forged block shares nothing with the real tree: all of them wait
    const shared = new Set(blocks.map(b => cidKey(b.cid)))
    const own = splitCar(forged.car).blocks.filter(b => !shared.has(cidKey(b.cid))).length
    assert.equal(guard.unreachable, own)
  })
})
