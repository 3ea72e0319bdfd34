/**
 * DigestTable against a Map doing the same counting: sha2-256 multihashes (the
 * table's own arrays, through several doublings) and another kind (its side map).
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { DigestTable } from '../../src/mirror/digest-table.ts'

const multihash = (i: number): Uint8Array => Uint8Array.from([0x12, 0x20, ...createHash('sha256').update(String(i)).digest()])
const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex')

describe('DigestTable', () => {
  it('counts like a Map keyed by multihash, through growth', () => {
    const table = new DigestTable()
    const expected = new Map<string, number>()
    for (let i = 0; i < 20_000; i++) {
      const mh = multihash(i % 15_000)
      const n = (i % 5) - 2
      table.add(mh, n)
      expected.set(hex(mh), (expected.get(hex(mh)) ?? 0) + n)
    }
    assert.equal(table.size, expected.size)
    for (const [key, count] of expected) assert.equal(table.get(Buffer.from(key, 'hex')), count)
    const seen = new Map([...table.entries()].map(([mh, count]) => [hex(mh), count]))
    assert.deepEqual(seen, expected)
    // insertion order
    assert.equal(hex([...table.entries()][0][0]), hex(multihash(0)))
  })

  it('counts digests that share their leading bytes (as a repo author can make them) apart', () => {
    const table = new DigestTable()
    const crafted = (i: number): Uint8Array => {
      const mh = multihash(i)
      // the same first 4 bytes for all, and the same next 4 for every other one
      mh.set([0xde, 0xad, 0xbe, 0xef], 2)
      if (i % 2 === 0) mh.set([1, 2, 3, 4], 6)
      return mh
    }
    for (let i = 0; i < 5_000; i++) table.add(crafted(i), i % 3 + 1)
    assert.equal(table.size, 5_000)
    for (let i = 0; i < 5_000; i++) assert.equal(table.get(crafted(i)), i % 3 + 1)
    assert.equal(table.get(crafted(5_000)), undefined)
  })

  it('tells absent from a count of zero', () => {
    const table = new DigestTable()
    table.add(multihash(1), 0)
    assert.equal(table.get(multihash(1)), 0)
    assert.equal(table.has(multihash(1)), true)
    assert.equal(table.get(multihash(2)), undefined)
    assert.equal(table.has(multihash(2)), false)
  })

  it('keeps multihashes of another kind beside the table', () => {
    const table = new DigestTable()
    const other = Uint8Array.from([0x13, 0x03, 1, 2, 3])
    table.add(other, 2)
    table.add(other, 1)
    table.add(multihash(7), 1)
    assert.equal(table.get(other), 3)
    assert.equal(table.size, 2)
    assert.deepEqual([...table.entries()].map(([mh, count]) => [hex(mh), count]), [[hex(multihash(7)), 1], [hex(other), 3]])
  })
})
