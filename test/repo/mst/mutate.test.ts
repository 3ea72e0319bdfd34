import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { MemoryBlockStore } from '../../../src/repo/block-store.ts'
import { cidForBytes, type CID } from '../../../src/repo/cid.ts'
import { EMPTY_MST_ROOT, buildMst } from '../../../src/repo/mst/build.ts'
import { keyHeight } from '../../../src/repo/mst/key.ts'
import { MstEditor } from '../../../src/repo/mst/mutate.ts'
import { encodeMstNode } from '../../../src/repo/mst/node.ts'

const record = (n: number | string): CID => cidForBytes(dagCbor.encode({ n }))
const keys = Array.from({ length: 400 }, (_, i) => `com.example.test/${i.toString(36).padStart(3, '0')}`).sort()

function storeOf (blocks: Array<{ cid: CID, bytes: Uint8Array }>): MemoryBlockStore {
  const store = new MemoryBlockStore()
  for (const block of blocks) store.put(block.cid, block.bytes)
  return store
}

describe('MstEditor', () => {
  it('builds by insertion, in any order, the tree buildMst builds', async () => {
    const empty = buildMst([])
    const editor = new MstEditor(storeOf(empty.blocks))
    let root = empty.root
    const shuffled = [...keys].sort((a, b) => keyHeight(a) - keyHeight(b) || (a < b ? 1 : -1))
    for (const key of shuffled) {
      const result = await editor.put(root, key, record(key))
      assert.equal(result.prev, null)
      root = result.root
    }
    assert.equal(root.toString(), buildMst(keys.map(rpath => ({ rpath, cid: record(rpath) }))).root.toString())
    assert.deepEqual(editor.loaded.map(String), [EMPTY_MST_ROOT.toString()], 'only the starting root was read from the store')
  })

  it('reports the previous value and keeps the root when nothing changes', async () => {
    const built = buildMst(keys.map(rpath => ({ rpath, cid: record(rpath) })))
    const editor = new MstEditor(storeOf(built.blocks))
    const same = await editor.put(built.root, keys[7], record(keys[7]))
    assert.equal(same.root.toString(), built.root.toString())
    assert.equal(same.prev?.toString(), record(keys[7]).toString())
    const absent = await editor.delete(built.root, 'com.example.test/zzzz')
    assert.equal(absent.root.toString(), built.root.toString())
    assert.equal(absent.prev, null)
  })

  it('reads only the nodes on the path of a lookup', async () => {
    const built = buildMst(keys.map(rpath => ({ rpath, cid: record(rpath) })))
    const editor = new MstEditor(storeOf(built.blocks))
    assert.equal((await editor.get(built.root, keys[100]))?.toString(), record(keys[100]).toString())
    assert.ok(editor.loaded.length <= 6 && editor.loaded.length < built.blocks.length)
    assert.equal(await editor.get(built.root, 'com.example.test/absent'), null)
  })

  it('throws MissingBlockError when a node it must change is absent', async () => {
    const built = buildMst(keys.map(rpath => ({ rpath, cid: record(rpath) })))
    const store = storeOf(built.blocks.filter(block => block.cid.equals(built.root)))
    const editor = new MstEditor(store)
    const deepest = keys.find(key => keyHeight(key) === 0) as string
    await assert.rejects(editor.delete(built.root, deepest), { name: 'MissingBlockError' })
    assert.equal(store.size, 1, 'nothing was stored')
  })

  it('throws MstInvalidError for a loaded node at the wrong layer', async () => {
    const [a, b] = keys.filter(k => keyHeight(k) === 1)
    const c = keys.find(k => keyHeight(k) === 0 && k > a) as string
    const store = new MemoryBlockStore()
    const put = (bytes: Uint8Array): CID => {
      const cid = cidForBytes(bytes)
      store.put(cid, bytes)
      return cid
    }
    // a layer-1 root whose right subtree holds another height-1 key
    const child = put(encodeMstNode({ left: null, entries: [{ key: b, value: record(b), right: null }] }))
    const root = put(encodeMstNode({ left: null, entries: [{ key: a, value: record(a), right: child }] }))
    await assert.rejects(new MstEditor(store).delete(root, c), { name: 'MstInvalidError', message: /key height 1 does not match node layer 0/ })
  })

  it('rejects an invalid key', async () => {
    const editor = new MstEditor(storeOf(buildMst([]).blocks))
    await assert.rejects(editor.put(EMPTY_MST_ROOT, 'not a path', record(1)), { name: 'InvalidRecordPathError' })
  })
})
