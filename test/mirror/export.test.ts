import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { readCarWithRoot, verifyRepo as atprotoVerifyRepo } from '@atproto/repo'
import { exportRepoCar, repoBlocks } from '../../src/mirror/export.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { verifyRepoCar } from '../../src/repo/verify.ts'
import { EvolvingRepo, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { collect } from '../helpers/bytes.ts'
import { BLOCKSTORE_KINDS, removeRawBlock } from '../helpers/blocks.ts'
import { hostileRepo } from '../helpers/hostile-mst.ts'

for (const kind of BLOCKSTORE_KINDS) describe(`export (${kind} store)`, () => {
  let root: string
  let store: MirrorStore
  let repo: EvolvingRepo
  let version: RepoVersion
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'atmirror-export-'))
    store = await MirrorStore.open(join(root, 'data'), { blockstore: kind })
    repo = await EvolvingRepo.create(21, posts(120))
    version = await repo.version()
    const release = await store.beginWrite()
    await store.putBlocks(version.did, version.blocks)
    await release()
  })
  after(async () => {
    await store.close()
    await rm(root, { recursive: true, force: true })
  })

  it('writes a CAR that atmirror and the reference implementation both verify', async () => {
    const car = await collect(exportRepoCar(store.blocks, version.commit))
    const ours = await verifyRepoCar(car, { did: version.did, key: repo.key })
    assert.equal(ours.records, 120)
    assert.equal(ours.unreachableBlocks, 0)
    assert.equal(ours.commit.toString(), version.commit.toString())
    const { root: carRoot, blocks } = await readCarWithRoot(car)
    assert.equal(carRoot.toString(), version.commit.toString())
    const verified = await atprotoVerifyRepo(blocks, carRoot, version.did, repo.keypair.did())
    assert.equal(verified.creates.length, 120)
  })

  it('puts the commit first and every block once, the tree in pre-order', async () => {
    const order: string[] = []
    for await (const block of repoBlocks(store.blocks, version.commit)) order.push(block.cid.toString())
    assert.equal(order[0], version.commit.toString())
    assert.equal(order[1], version.data.toString())
    assert.equal(new Set(order).size, order.length)
    assert.deepEqual([...order].sort(), version.blocks.map(b => b.cid.toString()).sort())
  })

  it('fails with MissingBlockError when the store lacks a block', async () => {
    const other = await (await EvolvingRepo.create(22, posts(10))).version()
    const release = await store.beginWrite()
    await store.putBlocks(other.did, other.blocks)
    await release()
    const record = other.blocks.find(b => b.bytes[0] !== 0xa2 && !b.cid.equals(other.commit))
    assert.ok(record !== undefined)
    await removeRawBlock(store, record.cid)
    await assert.rejects(collect(exportRepoCar(store.blocks, other.commit)), { name: 'MissingBlockError' })
  })

  it('fails with MstInvalidError on a node reached twice, writing each block once', { timeout: 60_000 }, async () => {
    // 3^40 paths through 40 nodes: an export that followed every link would not end
    const hostile = hostileRepo(40)
    const release = await store.beginWrite()
    await store.putBlocks(hostile.did, hostile.blocks)
    await release()
    const written: string[] = []
    await assert.rejects(async () => {
      for await (const block of repoBlocks(store.blocks, hostile.commit)) written.push(block.cid.toString())
    }, (err: Error & { cid?: string }) => {
      assert.equal(err.name, 'MstInvalidError')
      assert.match(err.message, /reached twice/)
      assert.equal(err.cid, hostile.shared.toString())
      return true
    })
    assert.equal(new Set(written).size, written.length)
    await assert.rejects(collect(exportRepoCar(store.blocks, hostile.commit)), { name: 'MstInvalidError' })
  })
})
