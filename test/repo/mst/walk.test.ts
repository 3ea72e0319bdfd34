import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { MemoryBlockStore, type ReadonlyBlockStore } from '../../../src/repo/block-store.ts'
import { cidForBytes, type CID } from '../../../src/repo/cid.ts'
import { EMPTY_MST_ROOT, buildMst } from '../../../src/repo/mst/build.ts'
import { keyHeight } from '../../../src/repo/mst/key.ts'
import { decodeMstNode, encodeMstNode } from '../../../src/repo/mst/node.ts'
import { missingMstBlockBatches, missingMstBlocks, walkMst, walkMstBatches, type MissingMstNode, type MstLeaf, type WalkMstOptions } from '../../../src/repo/mst/walk.ts'

const record = (n: number | string): CID => cidForBytes(dagCbor.encode({ n }))

/** Keys `com.example.test/<n>` grouped by height, each group sorted. */
const byHeight: string[][] = [[], [], []]
for (let i = 0; byHeight.some(list => list.length < 40); i++) {
  const key = `com.example.test/${i}`
  const height = keyHeight(key)
  if (height < 3 && byHeight[height].length < 40) byHeight[height].push(key)
}
for (const list of byHeight) list.sort()
const [h0, h1, h2] = byHeight

/** Hand-built trees: nodes written as given, even when they break the rules. */
class Tree {
  readonly store = new MemoryBlockStore()
  node (left: CID | null, entries: Array<[string, CID?]>): CID {
    return this.raw(encodeMstNode({ left, entries: entries.map(([key, right]) => ({ key, value: record(key), right: right ?? null })) }))
  }

  raw (bytes: Uint8Array): CID {
    const cid = cidForBytes(bytes)
    this.store.put(cid, bytes)
    return cid
  }
}

async function collect (store: ReadonlyBlockStore, root: CID, options?: WalkMstOptions): Promise<MstLeaf[]> {
  const leaves: MstLeaf[] = []
  for await (const leaf of walkMst(store, root, options)) leaves.push(leaf)
  return leaves
}

/** An async store around another, counting how many gets are in flight at once. */
class AsyncStore implements ReadonlyBlockStore {
  readonly inner: ReadonlyBlockStore
  inFlight = 0
  maxInFlight = 0
  gets = 0
  constructor (inner: ReadonlyBlockStore) { this.inner = inner }
  async get (cid: CID): Promise<Uint8Array | undefined> {
    this.gets++
    this.inFlight++
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight)
    await new Promise(resolve => setImmediate(resolve))
    this.inFlight--
    return await this.inner.get(cid)
  }

  async has (cid: CID): Promise<boolean> {
    return await this.inner.has(cid)
  }
}

function sampleKeys (count: number): string[] {
  const keys: string[] = []
  for (let i = 0; i < count; i++) keys.push(`app.bsky.feed.${i % 3 === 0 ? 'like' : 'post'}/${(i * 7919).toString(36).padStart(6, '0')}`)
  return keys.sort()
}

describe('walkMst on valid trees', () => {
  it('yields every leaf in key order', async () => {
    const keys = sampleKeys(500)
    const built = buildMst(keys.map((rpath, i) => ({ rpath, cid: record(i) })))
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const leaves = await collect(store, built.root)
    assert.deepEqual(leaves.map(l => l.rpath), keys)
    assert.deepEqual(leaves.map(l => l.cid.toString()), keys.map((_, i) => record(i).toString()))
  })

  it('yields the same leaves in batches, from an async store', async () => {
    const keys = sampleKeys(300)
    const built = buildMst(keys.map((rpath, i) => ({ rpath, cid: record(i) })))
    const inner = new MemoryBlockStore()
    for (const block of built.blocks) inner.put(block.cid, block.bytes)
    const store = new AsyncStore(inner)
    const batches: MstLeaf[][] = []
    for await (const batch of walkMstBatches(store, built.root, { batchSize: 64 })) batches.push(batch)
    assert.ok(batches.every(batch => batch.length > 0 && batch.length <= 64))
    assert.deepEqual(batches.flat().map(l => l.rpath), keys)
    assert.equal(store.gets, built.blocks.length, 'each node is read once')
  })

  it('yields nothing for the empty repo', async () => {
    const tree = new Tree()
    const root = tree.node(null, [])
    assert.equal(root.toString(), EMPTY_MST_ROOT.toString())
    assert.deepEqual(await collect(tree.store, root), [])
  })

  it('walks a tree with an entry-less intermediate node below the root', async () => {
    const keys = [h0[0], h0[1], h2[0]].sort()
    assert.ok(h0[1] < h2[0], 'the height-0 keys sort before the height-2 key')
    const built = buildMst(keys.map(rpath => ({ rpath, cid: record(rpath) })))
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const root = decodeMstNode(store.get(built.root) as Uint8Array)
    assert.equal(root.entries.length, 1)
    const middle = decodeMstNode(store.get(root.left as CID) as Uint8Array)
    assert.equal(middle.entries.length, 0, 'the layer-1 node has no entries')
    assert.notEqual(middle.left, null)
    assert.deepEqual((await collect(store, built.root)).map(l => l.rpath), keys)
  })
})

describe('walkMst rejects broken trees', () => {
  const cases: Array<[string, (t: Tree) => CID, string, RegExp]> = [
    ['keys out of order in a node', t => t.raw(dagCbor.encode({
      e: [
        { p: 0, k: new TextEncoder().encode(h0[1]), v: record(1), t: null },
        { p: 0, k: new TextEncoder().encode(h0[0]), v: record(2), t: null }
      ],
      l: null
    })), 'MstInvalidError', /strictly increasing|shorter than the shared prefix/],
    ['keys of different heights in one node', t => t.node(null, [[h0[0]], [h1[0]]].sort((a, b) => a[0] < b[0] ? -1 : 1) as Array<[string]>), 'MstInvalidError', /key height/],
    ['a child at the same layer as its parent', t => {
      const [a, b] = h1
      return t.node(t.node(null, [[a]]), [[b]])
    }, 'MstInvalidError', /key height 1 does not match node layer 0/],
    ['an empty leaf node below the root', t => t.node(t.node(null, []), [[h1[0]]]), 'MstInvalidError', /empty node below the root/],
    ['a root that only points to a subtree', t => t.node(t.node(null, [[h0[0]]]), []), 'MstInvalidError', /root is an entry-less node/],
    ['a prefix length shorter than the shared prefix', t => t.raw(dagCbor.encode({
      e: [
        { p: 0, k: new TextEncoder().encode(h0[0]), v: record(1), t: null },
        { p: 3, k: new TextEncoder().encode(h0[1].slice(3)), v: record(2), t: null }
      ],
      l: null
    })), 'MstInvalidError', /shorter than the shared prefix/],
    ['an invalid record path', t => t.raw(dagCbor.encode({ e: [{ p: 0, k: new TextEncoder().encode('com.example.test'), v: record(1), t: null }], l: null })), 'InvalidRecordPathError', /no "\/"/],
    ['a key repeated in another node', t => {
      const top = h1[10]
      const [low, next] = h0.filter(k => k < top)
      return t.node(t.node(null, [[low]]), [[top, t.node(null, [[low], [next]])]])
    }, 'MstInvalidError', /not after/],
    ['a node linked twice (its second place is outside its keys)', t => {
      const top = h1[10]
      const low = h0.find(k => k < top) as string
      return t.node(t.node(null, [[low]]), [[top, t.node(null, [[low]])]])
    }, 'MstInvalidError', /not after/],
    ['a key outside its subtree range', t => {
      const top = h1[10]
      const high = h0.find(k => k > top) as string
      return t.node(t.node(null, [[high]]), [[top]])
    }, 'MstInvalidError', /not before/],
    ['a subtree link below layer 0', t => {
      const top = h1[10]
      const lows = h0.filter(k => k < top)
      return t.node(t.node(null, [[lows[0], t.node(null, [[lows[1]]])]]), [[top]])
    }, 'MstInvalidError', /below layer 0/]
  ]
  for (const [what, make, name, message] of cases) {
    it(`rejects ${what}`, async () => {
      const tree = new Tree()
      const root = make(tree)
      const size = tree.store.size
      await assert.rejects(collect(tree.store, root), (err: Error) => {
        assert.equal(err.name, name)
        assert.match(err.message, message)
        return true
      })
      assert.equal(tree.store.size, size, 'nothing was stored')
    })
  }

  it('rejects a node with more entries than the limit', async () => {
    const built = buildMst(h0.slice(0, 10).map(rpath => ({ rpath, cid: record(rpath) })))
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    await assert.rejects(collect(store, built.root, { maxNodeEntries: 5 }), { name: 'MstInvalidError', message: /more than the limit of 5/ })
    assert.equal((await collect(store, built.root, { maxNodeEntries: 10 })).length, 10)
  })

  it('stops when aborted', async () => {
    const built = buildMst(sampleKeys(50).map(rpath => ({ rpath, cid: record(rpath) })))
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    await assert.rejects(collect(store, built.root, { signal: AbortSignal.abort() }), { name: 'AbortError' })
  })
})

describe('walkMst with missing blocks', () => {
  const keys = sampleKeys(400)
  const built = buildMst(keys.map((rpath, i) => ({ rpath, cid: record(i) })))
  const full = new MemoryBlockStore()
  for (const block of built.blocks) full.put(block.cid, block.bytes)
  // a node two layers down: its subtree is a strict part of the tree
  const rootNode = decodeMstNode(full.get(built.root) as Uint8Array)
  const child = rootNode.entries.find(e => e.right !== null)?.right as CID
  const grandchild = (() => {
    const node = decodeMstNode(full.get(child) as Uint8Array)
    return node.left ?? node.entries.find(e => e.right !== null)?.right as CID
  })()

  const without = (...drop: CID[]): MemoryBlockStore => {
    const store = new MemoryBlockStore()
    for (const block of built.blocks) if (!drop.some(cid => cid.equals(block.cid))) store.put(block.cid, block.bytes)
    return store
  }

  it('throws MissingBlockError naming the node and its place', async () => {
    await assert.rejects(collect(without(grandchild), built.root), (err: Error & { cid?: string }) => {
      assert.equal(err.name, 'MissingBlockError')
      assert.equal(err.cid, grandchild.toString())
      assert.match(err.message, /MST node \(layer \d+, keys/)
      assert.match(err.message, new RegExp(`linked from ${child.toString()}`))
      return true
    })
  })

  it('throws MissingBlockError for a missing root', async () => {
    await assert.rejects(collect(without(built.root), built.root), { name: 'MissingBlockError', message: /missing MST root node/ })
  })

  it('skips a missing subtree and reports it with onMissing: skip', async () => {
    const subtreeKeys = (await collect(full, grandchild)).map(l => l.rpath)
    assert.ok(subtreeKeys.length > 0)
    const missing: MissingMstNode[] = []
    const leaves = await collect(without(grandchild), built.root, { onMissing: 'skip', onMissingNode: m => missing.push(m) })
    assert.deepEqual(missing.map(m => m.cid.toString()), [grandchild.toString()])
    assert.equal(missing[0].parent?.toString(), child.toString())
    assert.deepEqual(leaves.map(l => l.rpath), keys.filter(k => !subtreeKeys.includes(k)))
    for (const key of subtreeKeys) {
      assert.ok((missing[0].after === null || key > missing[0].after) && (missing[0].before === null || key < missing[0].before))
    }
  })
})

describe('missingMstBlocks', () => {
  const keys = sampleKeys(600)
  const values = keys.map((_, i) => record(i))
  const built = buildMst(keys.map((rpath, i) => ({ rpath, cid: values[i] })))
  const recordBytes = new Map(keys.map((_, i) => [values[i].toString(), dagCbor.encode({ n: i })]))

  it('reports nothing for a complete repo', async () => {
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    for (const cid of values) store.put(cid, recordBytes.get(cid.toString()) as Uint8Array)
    const missing: CID[] = []
    for await (const cid of missingMstBlocks(store, built.root)) missing.push(cid)
    assert.deepEqual(missing, [])
  })

  it('finds every missing block over rounds of fetching, asking an async store for a layer at once', async () => {
    const inner = new MemoryBlockStore()
    const store = new AsyncStore(inner)
    const allBlocks = new Map<string, Uint8Array>([
      ...built.blocks.map(block => [block.cid.toString(), block.bytes] as [string, Uint8Array]),
      ...recordBytes
    ])
    let rounds = 0
    let fetched = 0
    while (true) {
      const missing: CID[] = []
      for await (const batch of missingMstBlockBatches(store, built.root, { batchSize: 1000 })) missing.push(...batch)
      if (missing.length === 0) break
      rounds++
      assert.ok(rounds < 20, 'rounds end')
      for (const cid of missing) {
        assert.equal(inner.has(cid), false, 'only absent blocks are reported')
        inner.put(cid, allBlocks.get(cid.toString()) as Uint8Array)
        fetched++
      }
    }
    assert.equal(fetched, allBlocks.size, 'every block was reported exactly once')
    assert.ok(rounds >= 2)
    assert.ok(store.maxInFlight > 1, 'nodes of a layer are requested together')
  })

  it('can leave records out', async () => {
    const store = new MemoryBlockStore()
    for (const block of built.blocks) store.put(block.cid, block.bytes)
    const missing: CID[] = []
    for await (const cid of missingMstBlocks(store, built.root, { records: false })) missing.push(cid)
    assert.equal(missing.length, 0)
    for await (const cid of missingMstBlocks(store, built.root)) missing.push(cid)
    assert.equal(missing.length, values.length)
  })

  it('rejects a broken tree', async () => {
    const tree = new Tree()
    const root = tree.node(tree.node(null, [[h0[0]]]), [])
    await assert.rejects(async () => {
      for await (const cid of missingMstBlocks(tree.store, root)) assert.fail(`reported ${cid.toString()}`)
    }, { name: 'MstInvalidError' })
  })
})
