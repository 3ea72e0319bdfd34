/**
 * The one MST traversal (src/repo/mst/traverse.ts): places, missing nodes and
 * nodes reached twice, in any visiting order; and the readers built on it in
 * src/repo (depth-first walk, missing-block search, diff) on a DAG posing as a tree.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { MemoryBlockStore } from '../../../src/repo/block-store.ts'
import { cidForBytes, type CID } from '../../../src/repo/cid.ts'
import { buildMst } from '../../../src/repo/mst/build.ts'
import { diffMst } from '../../../src/repo/mst/diff.ts'
import { MstTraversal, type MstPlace, type MstVisit } from '../../../src/repo/mst/traverse.ts'
import { missingMstBlocks, walkMst, walkMstSteps } from '../../../src/repo/mst/walk.ts'
import { hostileRepo, linkedTwice } from '../../helpers/hostile-mst.ts'

const record = (n: number): CID => cidForBytes(dagCbor.encode({ n }))
const keys = Array.from({ length: 400 }, (_, i) => `app.bsky.feed.post/${(i * 7919).toString(36).padStart(6, '0')}`).sort()
const built = buildMst(keys.map((rpath, i) => ({ rpath, cid: record(i) })))
const full = new MemoryBlockStore()
for (const block of built.blocks) full.put(block.cid, block.bytes)

/** Enters every node breadth first, last placed first: an order unlike the walk's. */
function enterAll (traversal: MstTraversal, store: MemoryBlockStore): MstVisit[] {
  const visits: MstVisit[] = []
  const todo: MstPlace[] = [traversal.root]
  while (todo.length > 0) {
    const place = todo.pop() as MstPlace
    const bytes = store.get(place.cid)
    if (bytes === undefined) {
      traversal.missing(place)
      continue
    }
    const visit = traversal.enter(place, bytes)
    visits.push(visit)
    for (const child of [visit.left, ...visit.rights]) if (child !== null) todo.push(child)
  }
  return visits
}

const rejection = async (run: () => Promise<unknown>): Promise<Error & { cid?: string }> => {
  try {
    await run()
  } catch (err) {
    return err as Error & { cid?: string }
  }
  return assert.fail('did not reject')
}

describe('MstTraversal', () => {
  it('places every node once, each in its layer and key range, in any order', async () => {
    const traversal = new MstTraversal(built.root)
    const visits = enterAll(traversal, full)
    assert.equal(visits.length, built.blocks.length)
    assert.equal(traversal.entered, built.blocks.length)
    assert.equal(new Set(visits.map(v => v.cid.toString())).size, visits.length)
    const leaves: string[] = []
    for (const { node, place, left, rights } of visits) {
      for (const entry of node.entries) {
        leaves.push(entry.key)
        assert.ok(place.after === null || entry.key > place.after, 'key after the range start')
        assert.ok(place.before === null || entry.key < place.before, 'key before the range end')
      }
      for (const child of [left, ...rights]) {
        if (child === null) continue
        assert.equal(child.layer, place.layer - 1)
        assert.equal(child.depth, place.depth + 1)
        assert.equal(child.parent?.toString(), place.cid.toString())
      }
    }
    assert.deepEqual(leaves.sort(), keys)
    const walked: string[] = []
    for await (const leaf of walkMst(full, built.root)) walked.push(leaf.rpath)
    assert.deepEqual(walked, keys)
  })

  it('throws MissingBlockError naming the missing node and its place', () => {
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const rootNode = new MstTraversal(built.root).enter(new MstTraversal(built.root).root, full.get(built.root) as Uint8Array)
    const child = rootNode.rights.find(place => place !== null) as MstPlace
    store.delete(child.cid)
    assert.throws(() => enterAll(new MstTraversal(built.root), store), (err: Error & { cid?: string }) => {
      assert.equal(err.name, 'MissingBlockError')
      assert.equal(err.cid, child.cid.toString())
      assert.match(err.message, new RegExp(`linked from ${built.root.toString()}`))
      return true
    })
  })

  it("reports missing nodes with onMissing: 'skip' and leaves their subtrees out", () => {
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const rootVisit = new MstTraversal(built.root).enter(new MstTraversal(built.root).root, full.get(built.root) as Uint8Array)
    const gone = [rootVisit.left, ...rootVisit.rights].filter(place => place !== null).slice(0, 2) as MstPlace[]
    for (const place of gone) store.delete(place.cid)
    const missing: MstPlace[] = []
    const traversal = new MstTraversal(built.root, { onMissing: 'skip', onMissingNode: place => missing.push(place) })
    const visits = enterAll(traversal, store)
    assert.deepEqual(missing.map(p => p.cid.toString()).sort(), gone.map(p => p.cid.toString()).sort())
    assert.ok(missing.every(p => p.parent?.equals(built.root) === true && p.depth === 1))
    assert.ok(visits.length < built.blocks.length - 1)
  })

  it('refuses a node reached twice without checks: MstInvalidError naming it where it is placed again', () => {
    const repo = hostileRepo(3)
    const store = new MemoryBlockStore()
    for (const block of repo.blocks) store.put(block.cid, block.bytes)
    assert.throws(() => enterAll(new MstTraversal(repo.data, { check: false }), store), (err: Error & { cid?: string }) => {
      assert.equal(err.name, 'MstInvalidError')
      assert.match(err.message, /reached twice/)
      assert.equal(err.cid, repo.shared.toString())
      return true
    })
  })

  it('with checks, a node reached twice fails at its second place, even when valid at its first', () => {
    const tree = linkedTwice()
    const store = new MemoryBlockStore()
    for (const block of tree.blocks) store.put(block.cid, block.bytes)
    // each place alone is fine: entering only the first one succeeds
    const traversal = new MstTraversal(tree.root)
    const rootVisit = traversal.enter(traversal.root, store.get(tree.root) as Uint8Array)
    assert.equal(traversal.enter(rootVisit.left as MstPlace, store.get(tree.shared) as Uint8Array).cid.toString(), tree.shared.toString())
    assert.throws(() => traversal.enter(rootVisit.rights[0] as MstPlace, store.get(tree.shared) as Uint8Array), (err: Error & { cid?: string }) => {
      assert.equal(err.name, 'MstInvalidError')
      assert.match(err.message, /not after/)
      assert.equal(err.cid, tree.shared.toString())
      return true
    })
    // and with remember, where it is placed the second time, before either place is entered
    assert.throws(() => enterAll(new MstTraversal(tree.root, { remember: true }), store), (err: Error & { cid?: string }) => {
      assert.equal(err.name, 'MstInvalidError')
      assert.match(err.message, /reached twice/)
      assert.equal(err.cid, tree.shared.toString())
      return true
    })
  })
})

describe('readers of a whole tree on a node reached twice', () => {
  // 3^40 paths: a reader that walked the repeats would not finish
  const repo = hostileRepo(40)
  const store = new MemoryBlockStore()
  for (const block of repo.blocks) store.put(block.cid, block.bytes)

  it('walkMstSteps (unchecked) stops at the first repeat, each node handed out once', { timeout: 60_000 }, async () => {
    const seen: string[] = []
    const err = await rejection(async () => {
      for await (const batch of walkMstSteps(store, repo.data, { check: false })) {
        for (const step of batch) if ('node' in step) seen.push(step.cid.toString())
      }
    })
    assert.equal(err.name, 'MstInvalidError')
    assert.equal(err.cid, repo.shared.toString())
    assert.equal(new Set(seen).size, seen.length)
  })

  it('walkMst (checked) refuses it, and the smallest tree linking a valid node twice', { timeout: 60_000 }, async () => {
    const err = await rejection(async () => { for await (const _ of walkMst(store, repo.data)) { /* walk */ } })
    assert.equal(err.name, 'MstInvalidError')
    const tree = linkedTwice()
    for (const block of tree.blocks) store.put(block.cid, block.bytes)
    const twice = await rejection(async () => { for await (const _ of walkMst(store, tree.root)) { /* walk */ } })
    assert.equal(twice.name, 'MstInvalidError')
    assert.equal(twice.cid, tree.shared.toString())
  })

  it('missingMstBlocks refuses it', { timeout: 60_000 }, async () => {
    const err = await rejection(async () => { for await (const _ of missingMstBlocks(store, repo.data)) { /* search */ } })
    assert.equal(err.name, 'MstInvalidError')
  })

  it('diffMst refuses it, on either side', { timeout: 60_000 }, async () => {
    const other = buildMst([{ rpath: 'app.bsky.feed.post/zzzz', cid: record(1) }])
    for (const block of other.blocks) store.put(block.cid, block.bytes)
    for (const [before, after] of [[null, repo.data], [repo.data, other.root]] as Array<[CID | null, CID]>) {
      const err = await rejection(async () => await diffMst(store, before, after))
      assert.equal(err.name, 'MstInvalidError')
      assert.match(err.message, /reached twice/)
    }
  })
})
