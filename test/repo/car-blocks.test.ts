/**
 * CarBlocks, the compact table `car verify` and `car ls` hold a CAR's blocks in:
 * every block found under its CID (whatever the codec) after the table has grown
 * many times, duplicates refused, reads counted once.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { CarBlocks } from '../../src/repo/car-blocks.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'

describe('CarBlocks', () => {
  const blocks = Array.from({ length: 20_000 }, (_, i) => {
    const bytes = encodeCbor({ i, pad: 'x'.repeat(i % 50) })
    return { cid: cidForBytes(bytes), bytes }
  })

  it('finds every block after growing, and refuses duplicates', () => {
    const table = new CarBlocks()
    for (const { cid, bytes } of blocks) assert.equal(table.add(cid, bytes), true)
    assert.equal(table.size, blocks.length)
    for (const { cid, bytes } of blocks) {
      assert.equal(table.has(cid), true)
      assert.deepEqual(table.get(cid), bytes)
    }
    assert.equal(table.add(blocks[123].cid, blocks[123].bytes), false)
    assert.equal(table.size, blocks.length)
  })

  it('holds copies: the caller may reuse its buffers', () => {
    const table = new CarBlocks()
    const bytes = encodeCbor({ hello: 'world' })
    const cid = cidForBytes(bytes)
    const buffer = bytes.slice()
    table.add(cid, buffer)
    buffer.fill(0)
    assert.deepEqual(table.get(cid), bytes)
  })

  it('answers by digest, whatever the codec; not for other digests or hashes', () => {
    const table = new CarBlocks()
    for (const { cid, bytes } of blocks.slice(0, 100)) table.add(cid, bytes)
    const { cid, bytes } = blocks[7]
    assert.deepEqual(table.get(CID.createV1(RAW, cid.multihash)), bytes)
    const other = new Uint8Array(cid.multihash.digest)
    other[31] ^= 1
    assert.equal(table.has(CID.createV1(0x71, Digest.create(0x12, other))), false)
    // same first eight bytes (slot and tag), another digest
    assert.equal(table.get(CID.createV1(0x71, Digest.create(0x12, other))), undefined)
    assert.equal(table.has(CID.createV1(0x71, Digest.create(0x13, new Uint8Array(64)))), false)
  })

  it('counts each block read once, with its size', () => {
    const table = new CarBlocks()
    for (const { cid, bytes } of blocks.slice(0, 10)) table.add(cid, bytes)
    table.get(blocks[0].cid)
    table.get(blocks[0].cid)
    table.get(blocks[1].cid)
    assert.equal(table.touched, 2)
    assert.equal(table.touchedBytes, blocks[0].bytes.byteLength + blocks[1].bytes.byteLength)
  })

  it('holds an empty block and a block larger than an arena chunk', () => {
    const table = new CarBlocks()
    const empty = new Uint8Array(0)
    const big = new Uint8Array(17 * 1024 * 1024).fill(5)
    table.add(cidForBytes(empty, RAW), empty)
    table.add(cidForBytes(big, RAW), big)
    assert.equal(table.get(cidForBytes(empty, RAW))?.byteLength, 0)
    assert.equal(table.get(cidForBytes(big, RAW))?.byteLength, big.byteLength)
  })
})
