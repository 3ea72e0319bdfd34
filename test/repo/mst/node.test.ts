import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { encode as cborgEncode } from 'cborg'
import { CID } from 'multiformats/cid'
import { RAW, cidForBytes } from '../../../src/repo/cid.ts'
import { decodeMstNode, encodeMstNode, type MstNode } from '../../../src/repo/mst/node.ts'

const record = (n: number): CID => cidForBytes(dagCbor.encode({ n }))
const subtree = (n: number): CID => cidForBytes(dagCbor.encode({ e: [], l: null, n }))
const bytes = (text: string): Uint8Array => new TextEncoder().encode(text)

/** A node written field by field with the generic encoder (canonical DAG-CBOR). */
function rawNode (e: unknown[], l: unknown = null, extra: Record<string, unknown> = {}): Uint8Array {
  return dagCbor.encode({ e, l, ...extra })
}

describe('mst node codec', () => {
  it('encodes the empty node as {e: [], l: null}', () => {
    const encoded = encodeMstNode({ left: null, entries: [] })
    assert.deepEqual(encoded, dagCbor.encode({ e: [], l: null }))
    assert.deepEqual(decodeMstNode(encoded), { left: null, entries: [] })
  })

  it('prefix-compresses keys exactly like the generic encoder of the spec schema', () => {
    const node: MstNode = {
      left: subtree(1),
      entries: [
        { key: 'app.bsky.feed.like/3k2a', value: record(1), right: null },
        { key: 'app.bsky.feed.post/3k2a', value: record(2), right: subtree(2) },
        { key: 'app.bsky.feed.post/3k2b', value: record(3), right: null },
        { key: 'app.bsky.graph.follow/x', value: record(4), right: subtree(3) }
      ]
    }
    const expected = rawNode([
      { p: 0, k: bytes('app.bsky.feed.like/3k2a'), v: record(1), t: null },
      { p: 14, k: bytes('post/3k2a'), v: record(2), t: subtree(2) },
      { p: 22, k: bytes('b'), v: record(3), t: null },
      { p: 9, k: bytes('graph.follow/x'), v: record(4), t: subtree(3) }
    ], subtree(1))
    const encoded = encodeMstNode(node)
    assert.deepEqual(encoded, expected)
    const decoded = decodeMstNode(encoded)
    assert.equal(decoded.left?.toString(), subtree(1).toString())
    assert.deepEqual(decoded.entries.map(e => [e.key, e.value.toString(), e.right?.toString() ?? null]),
      node.entries.map(e => [e.key, e.value.toString(), e.right?.toString() ?? null]))
  })

  it('round-trips nodes with long keys and many entries (multi-byte headers)', () => {
    const entries = []
    for (let i = 0; i < 300; i++) entries.push({ key: `com.example.long/${'x'.repeat(300)}${String(i).padStart(4, '0')}`, value: record(i), right: i % 3 === 0 ? subtree(i) : null })
    const node: MstNode = { left: null, entries }
    const encoded = encodeMstNode(node)
    const generic = dagCbor.decode(encoded) as { e: Array<{ p: number, k: Uint8Array }> }
    assert.equal(generic.e[1].p, 'com.example.long/'.length + 300 + 3)
    assert.deepEqual(dagCbor.encode(generic), encoded)
    assert.deepEqual(decodeMstNode(encoded).entries.map(e => e.key), entries.map(e => e.key))
  })

  it('accepts a record link of another codec (leaf links are not restricted)', () => {
    const rawRecord = cidForBytes(bytes('blob'), RAW)
    const node = decodeMstNode(rawNode([{ p: 0, k: bytes('a/b'), v: rawRecord, t: null }]))
    assert.equal(node.entries[0].value.code, RAW)
  })

  const invalid: Array<[string, () => Uint8Array, string]> = [
    ['an extra top-level field', () => rawNode([], null, { x: 1 }), 'MstInvalidError'],
    ['a missing "l"', () => dagCbor.encode({ e: [] }), 'MstInvalidError'],
    ['a node that is an array', () => dagCbor.encode([[], null]), 'MstInvalidError'],
    ['an entry without "t"', () => rawNode([{ p: 0, k: bytes('a/b'), v: record(1) }]), 'MstInvalidError'],
    ['an entry with an extra field', () => rawNode([{ p: 0, k: bytes('a/b'), v: record(1), t: null, x: null }]), 'MstInvalidError'],
    ['a text key suffix', () => rawNode([{ p: 0, k: 'a/b', v: record(1), t: null }]), 'MstInvalidError'],
    ['a negative prefix length', () => rawNode([{ p: -1, k: bytes('a/b'), v: record(1), t: null }]), 'MstInvalidError'],
    ['a null value', () => rawNode([{ p: 0, k: bytes('a/b'), v: null, t: null }]), 'MstInvalidError'],
    ['a subtree that is not a link', () => rawNode([{ p: 0, k: bytes('a/b'), v: record(1), t: bytes('x') }]), 'MstInvalidError'],
    ['a raw-codec subtree link', () => rawNode([], cidForBytes(bytes('x'), RAW)), 'MstInvalidError'],
    ['a CIDv0 subtree link', () => rawNode([], CID.createV0(subtree(1).multihash as never)), 'MstInvalidError'],
    ['a first entry with a prefix', () => rawNode([{ p: 1, k: bytes('a/b'), v: record(1), t: null }]), 'MstInvalidError'],
    ['a prefix longer than the previous key', () => rawNode([
      { p: 0, k: bytes('a/b'), v: record(1), t: null },
      { p: 4, k: bytes('c'), v: record(2), t: null }
    ]), 'MstInvalidError'],
    ['a prefix shorter than the shared prefix', () => rawNode([
      { p: 0, k: bytes('a/bc'), v: record(1), t: null },
      { p: 2, k: bytes('bd'), v: record(2), t: null }
    ]), 'MstInvalidError'],
    ['keys out of order', () => rawNode([
      { p: 0, k: bytes('a/c'), v: record(1), t: null },
      { p: 2, k: bytes('b'), v: record(2), t: null }
    ]), 'MstInvalidError'],
    ['a duplicate key', () => rawNode([
      { p: 0, k: bytes('a/c'), v: record(1), t: null },
      { p: 3, k: bytes(''), v: record(2), t: null }
    ]), 'MstInvalidError'],
    ['an invalid record path', () => rawNode([{ p: 0, k: bytes('nocollection'), v: record(1), t: null }]), 'InvalidRecordPathError'],
    ['a non-ASCII key byte', () => rawNode([{ p: 0, k: bytes('a/é'), v: record(1), t: null }]), 'InvalidRecordPathError'],
    ['map keys in non-canonical order', () => Uint8Array.from([0xa2, 0x61, 0x6c, 0xf6, 0x61, 0x65, 0x80]), 'CborDecodeError'],
    ['entry fields in non-canonical order', () => cborgEncode({ e: [{ p: 0, k: bytes('a/b'), v: record(1), t: null }], l: null }, {
      ...dagCbor.encodeOptions,
      // reversed order inside entries only
      mapSorter: (a: any, b: any) => (a[0].value.length === 1 && 'kptv'.includes(a[0].value) ? (a[0].value < b[0].value ? 1 : -1) : (a[0].value < b[0].value ? -1 : 1))
    }), 'CborDecodeError'],
    ['a non-minimal length header', () => Uint8Array.from([0xa2, 0x61, 0x65, 0x98, 0x00, 0x61, 0x6c, 0xf6]), 'CborDecodeError'],
    ['an indefinite-length array', () => Uint8Array.from([0xa2, 0x61, 0x65, 0x9f, 0xff, 0x61, 0x6c, 0xf6]), 'CborDecodeError'],
    ['trailing bytes', () => Uint8Array.from([...rawNode([]), 0x00]), 'CborDecodeError'],
    ['truncated bytes', () => rawNode([{ p: 0, k: bytes('a/b'), v: record(1), t: null }]).subarray(0, 20), 'CborDecodeError'],
    ['garbage', () => Uint8Array.from([0xff, 0xff]), 'CborDecodeError']
  ]
  for (const [what, make, name] of invalid) {
    it(`rejects ${what} with ${name}`, () => {
      const block = make()
      const cid = cidForBytes(block)
      assert.throws(() => decodeMstNode(block, cid), (err: Error) => {
        assert.equal(err.name, name)
        if (name !== 'InvalidRecordPathError') assert.match(err.message, new RegExp(cid.toString()))
        return true
      })
    })
  }

  it('accepts only the canonical encoding: on 4,000 mutated nodes, whatever decodes re-encodes to the same bytes (seeded)', () => {
    // xorshift32: deterministic, so a failure reproduces.
    let seed = 0x2545f491
    const rand = (n: number): number => {
      seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5
      return (seed >>> 0) % n
    }
    const words = ['app.bsky.feed.post', 'app.bsky.feed.like', 'app.bsky.graph.follow', 'com.example.x']
    let accepted = 0
    for (let i = 0; i < 4000; i++) {
      const keys = new Set<string>()
      for (let j = rand(6); j > 0; j--) keys.add(`${words[rand(words.length)]}/3k${rand(40).toString(36)}${rand(40).toString(36)}`)
      const node: MstNode = {
        left: rand(2) === 0 ? null : subtree(rand(5)),
        entries: [...keys].sort().map((key, j) => ({ key, value: record(j), right: rand(3) === 0 ? subtree(j) : null }))
      }
      const original = encodeMstNode(node)
      const mutated = original.slice()
      const at = rand(mutated.length)
      switch (rand(3)) {
        case 0: mutated[at] ^= 1 << rand(8); break
        case 1: mutated[at] = rand(256); break
        default: mutated[at] = mutated[at] + 1
      }
      let decoded: MstNode
      try {
        decoded = decodeMstNode(mutated)
      } catch (err) {
        assert.ok(['CborDecodeError', 'MstInvalidError', 'InvalidRecordPathError'].includes((err as Error).name), (err as Error).stack)
        continue
      }
      accepted++
      assert.deepEqual(encodeMstNode(decoded), mutated, `accepted non-canonical bytes ${Buffer.from(mutated).toString('hex')}`)
    }
    assert.ok(accepted > 50, `some mutations stay valid (${accepted})`)
  })

  it('refuses to encode unsorted or invalid keys', () => {
    assert.throws(() => encodeMstNode({ left: null, entries: [{ key: 'a/c', value: record(1), right: null }, { key: 'a/b', value: record(2), right: null }] }), { name: 'MstInvalidError' })
    assert.throws(() => encodeMstNode({ left: null, entries: [{ key: 'a b', value: record(1), right: null }] }), { name: 'InvalidRecordPathError' })
  })
})
