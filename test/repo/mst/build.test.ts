import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { cidForBytes, type CID } from '../../../src/repo/cid.ts'
import { EMPTY_MST_ROOT, buildMst } from '../../../src/repo/mst/build.ts'
import { keyHeight } from '../../../src/repo/mst/key.ts'
import { decodeMstNode } from '../../../src/repo/mst/node.ts'

const record = (n: number | string): CID => cidForBytes(dagCbor.encode({ n }))

describe('buildMst', () => {
  it('builds the empty tree as the single empty node', () => {
    const built = buildMst([])
    // the well-known CID of the empty MST node {e: [], l: null}
    assert.equal(built.root.toString(), 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm')
    assert.equal(EMPTY_MST_ROOT.toString(), built.root.toString())
    assert.equal(built.blocks.length, 1)
  })

  it('gives the same tree whatever the input order', () => {
    const entries = Array.from({ length: 200 }, (_, i) => ({ rpath: `com.example.test/${i}`, cid: record(i) }))
    const sorted = buildMst([...entries].sort((a, b) => a.rpath < b.rpath ? -1 : 1))
    const reversed = buildMst([...entries].sort((a, b) => a.rpath < b.rpath ? 1 : -1))
    assert.equal(sorted.root.toString(), reversed.root.toString())
    assert.deepEqual(sorted.blocks.map(b => b.cid.toString()), reversed.blocks.map(b => b.cid.toString()))
  })

  it('puts a single key in a single node at its own layer', () => {
    const key = 'app.bsky.feed.post/9adeb165882c' // height 8 (spec example)
    assert.equal(keyHeight(key), 8)
    const built = buildMst([{ rpath: key, cid: record(1) }])
    assert.equal(built.blocks.length, 1)
    const node = decodeMstNode(built.blocks[0].bytes, built.root)
    assert.deepEqual(node.entries.map(e => e.key), [key])
    assert.equal(node.left, null)
  })

  it('emits every block with its correct CID', () => {
    const built = buildMst(Array.from({ length: 300 }, (_, i) => ({ rpath: `com.example.test/${i}`, cid: record(i) })))
    for (const block of built.blocks) assert.equal(cidForBytes(block.bytes).toString(), block.cid.toString())
    assert.equal(built.blocks[built.blocks.length - 1].cid.toString(), built.root.toString(), 'the root comes last')
  })

  it('rejects a repeated key', () => {
    assert.throws(() => buildMst([{ rpath: 'a/b', cid: record(1) }, { rpath: 'a/b', cid: record(2) }]), { name: 'MstInvalidError', message: /duplicate key/ })
  })

  it('rejects an invalid record path', () => {
    assert.throws(() => buildMst([{ rpath: 'a/b/c', cid: record(1) }]), { name: 'InvalidRecordPathError' })
  })
})
