import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { MemoryBlockStore } from '../../../src/repo/block-store.ts'
import { cidForBytes } from '../../../src/repo/cid.ts'
import { EMPTY_MST_ROOT, buildMst } from '../../../src/repo/mst/build.ts'
import { listMstRange } from '../../../src/repo/mst/range.ts'

/** A tree of 2,000 keys in three collections, and its keys sorted. */
function tree (): { store: MemoryBlockStore, root: ReturnType<typeof buildMst>['root'], keys: string[] } {
  const keys: string[] = []
  for (const collection of ['app.bsky.feed.like', 'app.bsky.feed.post', 'app.bsky.graph.follow']) {
    for (let i = 0; i < 666; i++) keys.push(`${collection}/3k${String(i * 7919 % 100000).padStart(6, '0')}`)
  }
  keys.sort()
  const built = buildMst(keys.map(rpath => ({ rpath, cid: cidForBytes(dagCbor.encode({ rpath })) })))
  const store = new MemoryBlockStore()
  for (const block of built.blocks) store.put(block.cid, block.bytes)
  return { store, root: built.root, keys }
}

describe('listMstRange', () => {
  const { store, root, keys } = tree()
  const expect = (after: string | undefined, before: string | undefined, limit: number, reverse: boolean): string[] => {
    const inRange = keys.filter(key => (after === undefined || key > after) && (before === undefined || key < before))
    return (reverse ? inRange.reverse() : inRange).slice(0, limit)
  }

  it('lists the whole tree in order and reversed', async () => {
    assert.deepEqual((await listMstRange(store, root, { limit: 10_000 })).map(e => e.key), keys)
    assert.deepEqual((await listMstRange(store, root, { limit: 10_000, reverse: true })).map(e => e.key), [...keys].reverse())
  })

  it('lists one collection, page by page, both ways', async () => {
    for (const reverse of [false, true]) {
      const collection = 'app.bsky.feed.post'
      const pages: string[] = []
      let cursor: string | undefined
      while (true) {
        const page = await listMstRange(store, root, reverse
          ? { after: collection + '/', before: cursor ?? collection + '0', limit: 50, reverse }
          : { after: cursor ?? collection + '/', before: collection + '0', limit: 50 })
        pages.push(...page.map(e => e.key))
        if (page.length < 50) break
        cursor = page[page.length - 1].key
      }
      assert.deepEqual(pages, expect(collection + '/', collection + '0', 10_000, reverse))
    }
  })

  it('matches a filter of the sorted keys for many ranges', async () => {
    for (let i = 0; i < 60; i++) {
      const a = keys[(i * 37) % keys.length]
      const b = keys[(i * 101 + 500) % keys.length]
      const [after, before] = a < b ? [a, b] : [b, a]
      const limit = 1 + (i * 13) % 40
      const reverse = i % 2 === 1
      const got = (await listMstRange(store, root, { after, before, limit, reverse })).map(e => e.key)
      assert.deepEqual(got, expect(after, before, limit, reverse), `after=${after} before=${before} limit=${limit} reverse=${reverse}`)
    }
  })

  it('reads only the path and the page, not the tree', async () => {
    let reads = 0
    const counting = { get: (cid: Parameters<typeof store.get>[0]) => { reads++; return store.get(cid) }, has: (cid: Parameters<typeof store.has>[0]) => store.has(cid) }
    await listMstRange(counting, root, { after: 'app.bsky.feed.post/', before: 'app.bsky.feed.post0', limit: 5 })
    const all = buildMst(keys.map(rpath => ({ rpath, cid: cidForBytes(dagCbor.encode({ rpath })) }))).blocks.length
    assert.ok(reads < all / 4, `read ${reads} of ${all} nodes`)
  })

  it('lists nothing from an empty tree', async () => {
    const empty = new MemoryBlockStore()
    const built = buildMst([])
    for (const block of built.blocks) empty.put(block.cid, block.bytes)
    assert.deepEqual(await listMstRange(empty, EMPTY_MST_ROOT, { limit: 10 }), [])
  })
})
