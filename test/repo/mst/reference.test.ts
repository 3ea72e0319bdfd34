/**
 * Agreement with the reference implementation (@atproto/repo): the same mapping
 * gives the same tree, our walk reads the reference's tree record for record,
 * our diff agrees with the reference's diff, our editor reaches the reference's
 * root after the same edits, and the reference's commit proof blocks (the
 * PDS's covering proofs) suffice for our commit proof check.
 */
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { DataDiff, MST, MemoryBlockstore } from '@atproto/repo'
import { MemoryBlockStore } from '../../../src/repo/block-store.ts'
import { CID, cidForBytes } from '../../../src/repo/cid.ts'
import { buildMst } from '../../../src/repo/mst/build.ts'
import { diffMst } from '../../../src/repo/mst/diff.ts'
import { MstEditor } from '../../../src/repo/mst/mutate.ts'
import { verifyCommitProof, type CommitOp } from '../../../src/repo/mst/proof.ts'
import { walkMst } from '../../../src/repo/mst/walk.ts'
import { prng } from '../../../support/generated-repo.ts'

const COLLECTIONS = ['app.bsky.feed.post', 'app.bsky.feed.like', 'app.bsky.graph.follow', 'app.bsky.feed.repost', 'com.example.record']
const B32 = '234567abcdefghijklmnopqrstuvwxyz'

/** TID-like record keys clustered in time (long shared prefixes), plus a few odd ones. */
function randomKeys (count: number, random: () => number): string[] {
  const keys = new Set<string>()
  let clock = 1_700_000_000_000_000
  while (keys.size < count) {
    const collection = COLLECTIONS[Math.floor(random() * COLLECTIONS.length)]
    let rkey: string
    if (random() < 0.9) {
      clock += Math.floor(random() * 5_000_000)
      let n = clock
      rkey = ''
      for (let i = 0; i < 11; i++) {
        rkey = B32[n % 32] + rkey
        n = Math.floor(n / 32)
      }
      rkey += B32[Math.floor(random() * 32)] + B32[Math.floor(random() * 32)]
    } else {
      rkey = ['self', 'a', 'x-y', 'z:1', '~t', 'long_' + 'q'.repeat(Math.floor(random() * 200))][Math.floor(random() * 6)] + Math.floor(random() * 1000)
    }
    keys.add(`${collection}/${rkey}`)
  }
  return [...keys]
}

const recordCid = (key: string, version = 0): CID => cidForBytes(dagCbor.encode({ $type: 'test', key, version }))
const asRef = (cid: CID): never => cid as never
const fromRef = (cid: unknown): CID => CID.parse(String(cid))

async function referenceTree (storage: MemoryBlockstore, entries: Array<[string, CID]>): Promise<MST> {
  let mst = await MST.create(storage)
  for (const [key, cid] of entries) mst = await mst.add(key, asRef(cid))
  return mst
}

async function referenceBlocks (mst: MST): Promise<Array<{ cid: CID, bytes: Uint8Array }>> {
  const { blocks } = await mst.getUnstoredBlocks()
  return [...blocks].map(([cid, bytes]) => ({ cid: fromRef(cid), bytes }))
}

describe('agreement with @atproto/repo', () => {
  const random = prng(42)
  const keys = randomKeys(2000, random)
  const entries: Array<[string, CID]> = keys.map(key => [key, recordCid(key)])
  const storage = new MemoryBlockstore()
  let reference: MST
  let referenceRoot: CID
  let referenceNodes: string[]
  const ours = new MemoryBlockStore()

  // A random edit set: 150 creates, 150 updates, 150 deletes.
  const created = randomKeys(2150, prng(7)).filter(key => !keys.includes(key)).slice(0, 150)
  const shuffled = [...keys].sort(() => random() - 0.5)
  const updated = shuffled.slice(0, 150)
  const deleted = shuffled.slice(150, 300)
  let edited: MST
  let editedRoot: CID

  before(async () => {
    reference = await referenceTree(storage, entries)
    referenceRoot = fromRef(await reference.getPointer())
    const blocks = await referenceBlocks(reference)
    referenceNodes = blocks.map(b => b.cid.toString()).sort()
    for (const block of blocks) ours.put(block.cid, block.bytes)
    await storage.putMany((await reference.getUnstoredBlocks()).blocks)

    edited = reference
    for (const key of created) edited = await edited.add(key, asRef(recordCid(key)))
    for (const key of updated) edited = await edited.update(key, asRef(recordCid(key, 1)))
    for (const key of deleted) edited = await edited.delete(key)
    editedRoot = fromRef(await edited.getPointer())
    for (const block of await referenceBlocks(edited)) ours.put(block.cid, block.bytes)
  })

  it('buildMst gives the reference root and nodes for 2000 keys', async () => {
    const built = buildMst([...entries].sort(() => random() - 0.5).map(([rpath, cid]) => ({ rpath, cid })))
    assert.equal(built.root.toString(), referenceRoot.toString())
    assert.deepEqual(built.blocks.map(b => b.cid.toString()).sort(), referenceNodes)
  })

  it('walkMst reads the reference tree record for record', async () => {
    const leaves = []
    for await (const leaf of walkMst(ours, referenceRoot)) leaves.push([leaf.rpath, leaf.cid.toString()])
    const expected = (await reference.list()).map(leaf => [leaf.key, String(leaf.value)])
    assert.equal(leaves.length, 2000)
    assert.deepEqual(leaves, expected)
  })

  it('diffMst agrees with the reference diff on a random edit set', async () => {
    const refDiff = await DataDiff.of(edited, reference)
    const diff = await diffMst(ours, referenceRoot, editedRoot)
    assert.deepEqual(diff.createdNodes.map(String).sort(), refDiff.newMstBlocks.cids().map(String).sort())
    const oldNodes = new Set(referenceNodes)
    assert.deepEqual(diff.deletedNodes.map(String).sort(), refDiff.removedCids.toList().map(String).filter(cid => oldNodes.has(cid)).sort())
    const expectedOps = [
      ...refDiff.addList().map(op => ({ rpath: op.key, oldValue: null, newValue: String(op.cid) })),
      ...refDiff.updateList().map(op => ({ rpath: op.key, oldValue: String(op.prev), newValue: String(op.cid) })),
      ...refDiff.deleteList().map(op => ({ rpath: op.key, oldValue: String(op.cid), newValue: null }))
    ].sort((a, b) => a.rpath < b.rpath ? -1 : 1)
    assert.equal(expectedOps.length, 450)
    assert.deepEqual(diff.recordOps.map(op => ({ rpath: op.rpath, oldValue: op.oldValue?.toString() ?? null, newValue: op.newValue?.toString() ?? null })), expectedOps)

    const back = await diffMst(ours, editedRoot, referenceRoot)
    assert.deepEqual(back.createdNodes.map(String).sort(), diff.deletedNodes.map(String).sort())
    assert.equal(back.recordOps.length, 450)
    const all = await diffMst(ours, null, referenceRoot)
    assert.equal(all.recordOps.length, 2000)
    assert.ok(all.recordOps.every(op => op.oldValue === null))
  })

  it('MstEditor reaches the reference root after the same edits, in another order', async () => {
    const built = buildMst(entries.map(([rpath, cid]) => ({ rpath, cid })))
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const editor = new MstEditor(store)
    let root = built.root
    const edits: Array<() => Promise<void>> = [
      ...created.map(key => async () => { root = (await editor.put(root, key, recordCid(key))).root }),
      ...updated.map(key => async () => {
        const result = await editor.put(root, key, recordCid(key, 1))
        assert.equal(result.prev?.toString(), recordCid(key).toString())
        root = result.root
      }),
      ...deleted.map(key => async () => {
        const result = await editor.delete(root, key)
        assert.equal(result.prev?.toString(), recordCid(key).toString())
        root = result.root
      })
    ].sort(() => random() - 0.5)
    for (const edit of edits) await edit()
    assert.equal(root.toString(), editedRoot.toString())
    assert.equal((await editor.get(root, created[0]))?.toString(), recordCid(created[0]).toString())
    assert.equal(await editor.get(root, deleted[0]), null)
  })

  it('MstEditor deleting every key of a tree ends at the empty tree', async () => {
    const some = keys.slice(0, 600)
    const built = buildMst(some.map(rpath => ({ rpath, cid: recordCid(rpath) })))
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const editor = new MstEditor(store)
    let root = built.root
    const order = [...some].sort(() => random() - 0.5)
    for (let i = 0; i < order.length; i++) {
      root = (await editor.delete(root, order[i])).root
      if (i % 100 === 99) {
        const rest = order.slice(i + 1).map(rpath => ({ rpath, cid: recordCid(rpath) }))
        assert.equal(root.toString(), buildMst(rest).root.toString(), `after ${i + 1} deletes`)
      }
    }
    assert.equal(root.toString(), buildMst([]).root.toString())
  })

  it('verifyCommitProof accepts the reference PDS covering proofs for single-record commits', async () => {
    const editsRandom = prng(99)
    let mst = reference
    for (let i = 0; i < 40; i++) {
      const prevData = fromRef(await mst.getPointer())
      const kind = Math.floor(editsRandom() * 3)
      const existing = (await mst.list(1, keys[Math.floor(editsRandom() * keys.length)]))[0]
      let op: CommitOp
      let next: MST
      if (kind === 0 || existing === undefined) {
        const key = `app.bsky.feed.post/new${i}x${Math.floor(editsRandom() * 1e6)}`
        next = await mst.add(key, asRef(recordCid(key)))
        op = { action: 'create', path: key, cid: recordCid(key) }
      } else if (kind === 1) {
        next = await mst.update(existing.key, asRef(recordCid(existing.key, i + 10)))
        op = { action: 'update', path: existing.key, cid: recordCid(existing.key, i + 10), prev: fromRef(existing.value) }
      } else {
        next = await mst.delete(existing.key)
        op = { action: 'delete', path: existing.key, cid: null, prev: fromRef(existing.value) }
      }
      const proof = new MemoryBlockStore()
      for (const [cid, bytes] of await next.getCoveringProof(op.path)) proof.put(fromRef(cid), bytes)
      const data = fromRef(await next.getPointer())
      await verifyCommitProof(proof, data, prevData, [op])
      await storage.putMany((await next.getUnstoredBlocks()).blocks)
      mst = next
    }
  })
})
