import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { CarBufferReader } from '@ipld/car/buffer-reader'
import { CarWriter } from '@ipld/car/writer'
import * as dagCbor from '@ipld/dag-cbor'
import { varint } from 'multiformats'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { readCar, writeCar, type Block } from '../../src/repo/car.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'
import { block } from '../helpers/blocks.ts'
import { chunked, collect } from '../helpers/bytes.ts'

const blocks: Block[] = Array.from({ length: 50 }, (_, i) => block({ $type: 'test.record', i, text: 'x'.repeat(i * 7) }))
const [b0, b1, b2] = blocks

function uvarint (n: number): Uint8Array {
  const out = new Uint8Array(varint.encodingLength(n))
  varint.encodeTo(n, out)
  return out
}

function cat (...parts: Array<Uint8Array | number[]>): Uint8Array {
  return new Uint8Array(Buffer.concat(parts.map(p => Uint8Array.from(p))))
}

function header (value: unknown): Uint8Array {
  const bytes = dagCbor.encode(value)
  return cat(uvarint(bytes.length), bytes)
}

function section (cid: CID | Uint8Array, bytes: Uint8Array): Uint8Array {
  const cidBytes = cid instanceof Uint8Array ? cid : cid.bytes
  return cat(uvarint(cidBytes.length + bytes.length), cidBytes, bytes)
}

/** The CAR bytes followed by zero chunks forever: reading must not wait for the end. */
async function * endless (prefix: Uint8Array): AsyncGenerator<Uint8Array> {
  yield prefix
  while (true) yield new Uint8Array(64 * 1024)
}

/** Reads a whole CAR, returning the roots, the blocks read before any error, and the error. */
async function readAll (source: Uint8Array | AsyncIterable<Uint8Array>, options?: Parameters<typeof readCar>[1]): Promise<{ roots?: CID[], read: Block[], error?: Error & { offset?: number } }> {
  const read: Block[] = []
  let roots: CID[] | undefined
  try {
    const car = await readCar(source, options)
    roots = car.roots
    for await (const b of car.blocks) read.push(b)
  } catch (err) {
    return { roots, read, error: err as Error }
  }
  return { roots, read }
}

const goodHeader = header({ version: 1, roots: [b0.cid] })

describe('readCar / writeCar', () => {
  it('round-trips roots and blocks in order', async () => {
    const bytes = await collect(writeCar([b0.cid], blocks))
    const { roots, read, error } = await readAll(bytes)
    assert.equal(error, undefined)
    assert.deepEqual(roots?.map(String), [b0.cid.toString()])
    assert.deepEqual(read.map(b => b.cid.toString()), blocks.map(b => b.cid.toString()))
    assert.deepEqual(read.map(b => Buffer.from(b.bytes).toString('hex')), blocks.map(b => Buffer.from(b.bytes).toString('hex')))
  })

  for (const size of [1, 3, 37, 65536]) {
    it(`reads the same from a stream of ${size}-byte chunks`, async () => {
      const bytes = await collect(writeCar([b0.cid], blocks))
      const { read, error } = await readAll(chunked(bytes, size))
      assert.equal(error, undefined)
      assert.deepEqual(read.map(b => b.cid.toString()), blocks.map(b => b.cid.toString()))
    })
  }

  it('keeps several roots in order (first = commit)', async () => {
    const bytes = await collect(writeCar([b1.cid, b0.cid, b2.cid], [b0, b1, b2]))
    const { roots } = await readAll(bytes)
    assert.deepEqual(roots?.map(String), [b1.cid, b0.cid, b2.cid].map(String))
  })

  it('yields duplicate blocks as they appear, each verified', async () => {
    const bytes = await collect(writeCar([b0.cid], [b0, b1, b0, b1]))
    const { read, error } = await readAll(bytes)
    assert.equal(error, undefined)
    assert.deepEqual(read.map(b => b.cid.toString()), [b0, b1, b0, b1].map(b => b.cid.toString()))
  })

  it('reads a CAR with a header and no blocks', async () => {
    const { roots, read, error } = await readAll(goodHeader)
    assert.equal(error, undefined)
    assert.equal(roots?.length, 1)
    assert.equal(read.length, 0)
  })

  it('accepts a header without roots only when allowNoRoots is set (getBlocks CARs)', async () => {
    const bytes = await collect(writeCar([], [b0, b1]))
    const strict = await readAll(bytes)
    assert.equal(strict.error?.name, 'CarParseError')
    const lenient = await readAll(bytes, { allowNoRoots: true })
    assert.equal(lenient.error, undefined)
    assert.deepEqual(lenient.roots, [])
    assert.equal(lenient.read.length, 2)
  })

  it('reads raw (blob) blocks', async () => {
    const bytes = new Uint8Array([1, 2, 3, 4])
    const raw = { cid: cidForBytes(bytes, RAW), bytes }
    const { read, error } = await readAll(await collect(writeCar([b0.cid], [b0, raw])))
    assert.equal(error, undefined)
    assert.equal(read[1].cid.code, RAW)
  })

  it('writes chunks of about 64 KiB and passes big blocks through uncopied', async () => {
    const big = { cid: cidForBytes(new Uint8Array(200_000).fill(7), RAW), bytes: new Uint8Array(200_000).fill(7) }
    const many = Array.from({ length: 2000 }, (_, i) => block({ i }))
    const chunks: Uint8Array[] = []
    for await (const chunk of writeCar([b0.cid], [...many, big, b0])) chunks.push(chunk)
    assert.ok(chunks.includes(big.bytes), 'the big block is yielded as is')
    assert.ok(chunks.every(c => c === big.bytes || c.length < 64 * 1024 + 1024), 'chunks stay near 64 KiB')
    assert.ok(chunks.length < 20, `few chunks (${chunks.length})`)
    const { read, error } = await readAll(cat(...chunks))
    assert.equal(error, undefined)
    assert.equal(read.length, many.length + 2)
  })

  it('writes CARs that @ipld/car reads, and reads CARs that @ipld/car writes', async () => {
    const ours = await collect(writeCar([b0.cid, b1.cid], blocks))
    const theirsReading = CarBufferReader.fromBytes(ours)
    assert.deepEqual(theirsReading.getRoots().map(String), [b0.cid, b1.cid].map(String))
    assert.deepEqual(theirsReading.blocks().map(b => b.cid.toString()), blocks.map(b => b.cid.toString()))

    const { writer, out } = CarWriter.create([b2.cid])
    const written = collect(out)
    for (const b of blocks) await writer.put(b)
    await writer.close()
    const { roots, read, error } = await readAll(await written)
    assert.equal(error, undefined)
    assert.deepEqual(roots?.map(String), [b2.cid.toString()])
    assert.equal(read.length, blocks.length)
  })

  it('stops on abort with the AbortError', async () => {
    const controller = new AbortController()
    const car = await readCar(await collect(writeCar([b0.cid], blocks)), { signal: controller.signal })
    let seen = 0
    await assert.rejects(async () => {
      for await (const _ of car.blocks) {
        if (++seen === 3) controller.abort()
      }
    }, { name: 'AbortError' })
    assert.equal(seen, 3)
  })

  it('refuses to start with an aborted signal', async () => {
    await assert.rejects(readCar(goodHeader, { signal: AbortSignal.abort() }), { name: 'AbortError' })
  })

  it('releases the source when the reader stops early', async () => {
    const bytes = await collect(writeCar([b0.cid], blocks))
    let closed = false
    async function * source (): AsyncGenerator<Uint8Array> {
      try {
        yield * chunked(bytes, 16)
      } finally {
        closed = true
      }
    }
    const car = await readCar(source())
    for await (const _ of car.blocks) break
    assert.equal(closed, true)
  })
})

describe('writeCar streams from its block source', () => {
  /** Blocks of 70 KB: each one is a chunk of its own. */
  const bigBlocks = Array.from({ length: 40 }, (_, i) => {
    const bytes = new Uint8Array(70_000).fill(i)
    return { cid: cidForBytes(bytes, RAW), bytes }
  })

  it('pulls blocks only as the output is consumed and releases the source when the consumer stops early', async () => {
    let pulled = 0
    let released = false
    async function * source (): AsyncGenerator<Block> {
      try {
        for (const b of bigBlocks) {
          pulled++
          yield b
        }
      } finally {
        released = true
      }
    }
    let chunks = 0
    for await (const _ of writeCar([b0.cid], source())) {
      if (++chunks === 3) break
    }
    assert.equal(released, true, 'the source was returned before writeCar finished')
    assert.ok(pulled < 10, `only a few blocks were pulled (${pulled})`)
  })

  it('passes on an error of the block source after what was written before it', async () => {
    const failure = new Error('source failed')
    async function * source (): AsyncGenerator<Block> {
      yield b0
      yield b1
      throw failure
    }
    const chunks: Uint8Array[] = []
    await assert.rejects(async () => {
      for await (const chunk of writeCar([b0.cid], source())) chunks.push(chunk)
    }, (err: unknown) => err === failure)
  })

  it('stops with the AbortError when the signal aborts, releasing the source', async () => {
    const controller = new AbortController()
    let released = false
    function * source (): Generator<Block> {
      try {
        yield * bigBlocks
      } finally {
        released = true
      }
    }
    let chunks = 0
    await assert.rejects(async () => {
      for await (const _ of writeCar([b0.cid], source(), { signal: controller.signal })) {
        if (++chunks === 2) controller.abort()
      }
    }, { name: 'AbortError' })
    assert.equal(released, true)
  })

  it('rejects a root that is not a CID (TypeError) without touching the source', async () => {
    let pulled = false
    function * source (): Generator<Block> {
      pulled = true
      yield b0
    }
    await assert.rejects(collect(writeCar(['bafy' as unknown as CID], source())), { name: 'TypeError' })
    assert.equal(pulled, false)
  })
})

describe('readCar rejects bad blocks', () => {
  it('a block whose bytes do not match its CID (CidMismatchError), after the good ones', async () => {
    const bad = section(b1.cid, b2.bytes)
    const { read, error } = await readAll(cat(goodHeader, section(b0.cid, b0.bytes), bad, section(b2.cid, b2.bytes)))
    assert.equal(error?.name, 'CidMismatchError')
    assert.ok(error?.message.includes(b1.cid.toString()))
    assert.deepEqual(read.map(b => b.cid.toString()), [b0.cid.toString()])
  })

  it('a block with a sha2-512 CID (UnsupportedCidError)', async () => {
    const cid = CID.createV1(0x71, Digest.create(0x13, new Uint8Array(64)))
    const { read, error } = await readAll(cat(goodHeader, section(cid, b0.bytes)))
    assert.equal(error?.name, 'UnsupportedCidError')
    assert.equal(read.length, 0)
  })

  it('a block with a CIDv0 (UnsupportedCidError)', async () => {
    const cid = CID.createV0(Digest.create(0x12, new Uint8Array(32)))
    const { error } = await readAll(cat(goodHeader, section(cid, b0.bytes)))
    assert.equal(error?.name, 'UnsupportedCidError')
  })
})

describe('readCar rejects malformed CARs with CarParseError and the offset', () => {
  const s0 = section(b0.cid, b0.bytes)
  const at = goodHeader.length + s0.length // where the second section starts
  const cidLength = b1.cid.bytes.length

  const cases: Array<{ name: string, bytes: Uint8Array, offset: number, message: string, blocksBefore?: number, options?: Parameters<typeof readCar>[1] }> = [
    { name: 'empty input', bytes: new Uint8Array(0), offset: 0, message: 'empty input' },
    { name: 'unterminated header length varint', bytes: cat([0x80, 0x80]), offset: 0, message: 'varint is truncated' },
    { name: 'overlong header length varint (9+ bytes)', bytes: cat(new Array(12).fill(0xff)), offset: 0, message: 'longer than 8 bytes' },
    { name: 'non-minimal header length varint', bytes: cat([0x80 | (goodHeader.length - 1), 0x00], goodHeader.subarray(1)), offset: 0, message: 'not minimally encoded' },
    { name: 'zero header length', bytes: cat([0x00], s0), offset: 0, message: 'header length is zero' },
    { name: 'absurd header length', bytes: cat(uvarint(2 ** 40), goodHeader), offset: 0, message: 'exceeds' },
    { name: 'truncated header', bytes: goodHeader.subarray(0, 20), offset: 0, message: 'truncated header' },
    { name: 'garbage header', bytes: cat([5, 0xde, 0xad, 0xbe, 0xef, 0x00]), offset: 0, message: 'invalid header' },
    { name: 'header that is a CBOR array', bytes: header([1, [b0.cid]]), offset: 0, message: 'invalid header' },
    { name: 'header version 2', bytes: cat(header({ version: 2, roots: [b0.cid] }), s0), offset: 0, message: 'version' },
    { name: 'CARv2 pragma', bytes: cat(header({ version: 2 }), new Uint8Array(40)), offset: 0, message: 'version' },
    { name: 'header version 1 without roots', bytes: cat(header({ version: 1, roots: [] }), s0), offset: 0, message: 'no roots' },
    { name: 'header without a roots field', bytes: cat(header({ version: 1 }), s0), offset: 0, message: 'invalid header' },
    { name: 'header with string roots', bytes: cat(header({ version: 1, roots: [b0.cid.toString()] }), s0), offset: 0, message: 'invalid header' },
    { name: 'header length that runs into the first section', bytes: cat([goodHeader[0] + 3], goodHeader.subarray(1), s0), offset: 0, message: 'invalid header' },
    { name: 'unterminated section length varint', bytes: cat(goodHeader, s0, [0x80]), offset: at, message: 'varint is truncated', blocksBefore: 1 },
    { name: 'overlong section length varint (9+ bytes)', bytes: cat(goodHeader, s0, new Array(9).fill(0xff), [0x01]), offset: at, message: 'longer than 8 bytes', blocksBefore: 1 },
    { name: 'non-minimal section length varint', bytes: cat(goodHeader, s0, [0x81, 0x80, 0x00]), offset: at, message: 'not minimally encoded', blocksBefore: 1 },
    { name: 'zero section length', bytes: cat(goodHeader, s0, [0x00], s0), offset: at, message: 'section length is zero', blocksBefore: 1 },
    { name: 'section length shorter than its CID', bytes: cat(goodHeader, s0, uvarint(cidLength - 4), b1.cid.bytes, b1.bytes), offset: at, message: 'shorter than its contents', blocksBefore: 1 },
    { name: 'section length of 1 byte', bytes: cat(goodHeader, s0, [0x01], s0), offset: at, message: 'shorter than its contents', blocksBefore: 1 },
    { name: 'absurd section length', bytes: cat(goodHeader, s0, uvarint(2 ** 50), b1.cid.bytes, b1.bytes), offset: at, message: 'exceeds', blocksBefore: 1 },
    { name: 'truncated section (block cut short)', bytes: section(b1.cid, b1.bytes).subarray(0, 60), offset: at, message: 'truncated section', blocksBefore: 1 },
    { name: 'truncated section (CID cut short)', bytes: cat(uvarint(cidLength + 10), b1.cid.bytes.subarray(0, 20)), offset: at, message: 'truncated section', blocksBefore: 1 },
    { name: 'section CID with an unknown version', bytes: section(cat([0x02, 0x71, 0x12, 0x20], new Uint8Array(32)), b1.bytes), offset: at, message: 'invalid section CID', blocksBefore: 1 },
    { name: 'section CID not canonically encoded', bytes: section(cat([0x81, 0x00], b1.cid.bytes.subarray(1)), b1.bytes), offset: at, message: 'not canonically encoded', blocksBefore: 1 },
    { name: 'block over maxBlockBytes', bytes: section(b1.cid, b1.bytes), offset: at, message: 'limit', blocksBefore: 1, options: { maxBlockBytes: b0.bytes.length } }
  ]
  for (const c of cases) {
    // Section cases are written relative to a valid header and first block.
    const bytes = c.offset === at && !startsWith(c.bytes, goodHeader) ? cat(goodHeader, s0, c.bytes) : c.bytes
    it(c.name, async () => {
      for (const source of [bytes, chunked(bytes, 5)]) {
        const { read, error } = await readAll(source, c.options)
        assert.equal(error?.name, 'CarParseError', error?.stack ?? 'no error')
        assert.equal(error.offset, c.offset, error.message)
        assert.ok(error.message.includes(c.message), `"${error.message}" should mention "${c.message}"`)
        assert.equal(read.length, c.blocksBefore ?? 0, 'blocks yielded before the error')
      }
    })
  }

  it('an absurd header length on an endless stream fails without waiting for the end', async () => {
    const { error } = await readAll(endless(uvarint(2 ** 40)))
    assert.equal(error?.name, 'CarParseError')
  })

  it('an absurd section length on an endless stream fails without waiting for the end', async () => {
    const { read, error } = await readAll(endless(cat(goodHeader, s0, uvarint(2 ** 45))))
    assert.equal(error?.name, 'CarParseError')
    assert.equal(read.length, 1)
  })

  it('a section length < CID length on an endless stream fails without waiting for the end', async () => {
    const { error } = await readAll(endless(cat(goodHeader, uvarint(5))))
    assert.equal(error?.name, 'CarParseError')
  })

  it('a non-atproto root CID (UnsupportedCidError)', async () => {
    const root = CID.createV0(Digest.create(0x12, new Uint8Array(32)))
    const { error, read } = await readAll(cat(header({ version: 1, roots: [root] }), s0))
    assert.equal(error?.name, 'UnsupportedCidError')
    assert.equal(read.length, 0)
  })
})

describe('mst-test-suite CARs read the same as with @ipld/car', () => {
  const dir = join(import.meta.dirname, '../vectors/mst-test-suite/cars/exhaustive')
  for (const name of readdirSync(dir).filter(f => f.endsWith('.car')).sort()) {
    it(name, async () => {
      const bytes = readFileSync(join(dir, name))
      const reference = CarBufferReader.fromBytes(bytes)
      const { roots, read, error } = await readAll(bytes)
      assert.equal(error, undefined)
      assert.deepEqual(roots?.map(String), reference.getRoots().map(String))
      assert.deepEqual(read.map(b => b.cid.toString()), reference.blocks().map(b => b.cid.toString()))
    })
  }
})

function startsWith (bytes: Uint8Array, prefix: Uint8Array): boolean {
  return bytes.length >= prefix.length && Buffer.from(bytes.subarray(0, prefix.length)).equals(prefix)
}
