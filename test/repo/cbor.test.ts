import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { checkDrisl, decodeCbor, encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'

const hex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text.replace(/\s+/g, ''), 'hex'))
const cid = cidForBytes(new Uint8Array([1, 2, 3]))
const cidHex = Buffer.from(cid.bytes).toString('hex')

describe('decodeCbor accepts DRISL', () => {
  it('round-trips every data-model type', () => {
    const value = {
      null: null,
      t: true,
      f: false,
      int: 23,
      big: 2 ** 40,
      neg: -500,
      huge: 2n ** 63n - 1n,
      text: 'a~öñ©⽘☎𓋓😀👨‍👩‍👧‍👧',
      bytes: new Uint8Array([0, 1, 255]),
      link: cid,
      blob: cidForBytes(new Uint8Array([9]), RAW),
      list: [1, 'two', [3], { four: 4 }],
      map: { nested: { deeper: [] } }
    }
    assert.deepEqual(decodeCbor(encodeCbor(value)), value)
  })

  it('orders keys length-first then bytewise, including integer-like keys', () => {
    const bytes = encodeCbor({ b: 1, 1: 2, aa: 3 })
    assert.deepEqual(Object.keys(decodeCbor<Record<string, number>>(bytes)).sort(), ['1', 'aa', 'b'])
  })

  it('keeps a leading byte-order mark and a literal U+FFFD exactly', () => {
    const value = { bom: '\uFEFFstarts with a BOM', replacement: 'keeps \uFFFD as is' }
    assert.deepEqual(decodeCbor(encodeCbor(value)), value)
  })

  it('decodes atproto CIDs to working CID objects', () => {
    const raw = cidForBytes(new Uint8Array([7]), RAW)
    const decoded = decodeCbor<{ a: CID, b: CID }>(encodeCbor({ a: cid, b: raw }))
    assert.ok(decoded.a.equals(cid))
    assert.equal(decoded.a.toString(), cid.toString())
    assert.ok(CID.parse(decoded.b.toString()).equals(raw))
    assert.equal(decoded.b.code, RAW)
  })

  it('decodes CIDs that are not atproto-shaped through the general path', () => {
    const identity = CID.createV1(0x71, Digest.create(0x00, new Uint8Array([1, 2, 3])))
    const decoded = decodeCbor<{ a: CID }>(encodeCbor({ a: identity }))
    assert.ok(decoded.a.equals(identity))
  })

  it('accepts 64-bit floats when floats are allowed', () => {
    assert.deepEqual(decodeCbor(hex('a1 61 61 fb 3ff8000000000000'), { rejectFloats: false }), { a: 1.5 })
  })

  it('accepts unsorted keys when canonical checks are off', () => {
    assert.deepEqual(decodeCbor(hex('a2 61 62 01 61 61 02'), { canonical: false }), { a: 2, b: 1 })
  })
})

describe('decodeCbor rejects what DRISL forbids (CborDecodeError)', () => {
  const cases: Array<[string, string, string?, Parameters<typeof decodeCbor>[1]?]> = [
    ['map keys out of bytewise order', 'a2 61 62 01 61 61 02', 'canonical order'],
    ['a longer key before a shorter one', 'a2 62 61 61 01 61 62 02', 'canonical order'],
    ['out-of-order keys in a nested map', 'a1 61 6d a2 61 62 01 61 61 02', 'canonical order'],
    ['duplicate map keys', 'a2 61 61 01 61 61 02', 'repeat map key'],
    ['a float', 'a1 61 61 fb 3ff8000000000000', 'float'],
    ['a float inside an array', '82 01 fb 3ff8000000000000', 'float'],
    ['a 32-bit float even when floats are allowed', 'fa 3fc00000', '64 bits', { rejectFloats: false }],
    ['a 16-bit float even when floats are allowed', 'f9 3e00', '64 bits', { rejectFloats: false }],
    ['NaN', 'fb 7ff8000000000000', undefined, { rejectFloats: false }],
    ['Infinity', 'fb 7ff0000000000000', undefined, { rejectFloats: false }],
    ['an unsigned integer in more bytes than needed', '18 01'],
    ['a negative integer in more bytes than needed', '38 00'],
    ['a 32-bit integer that fits in 16 bits', '1a 0000ffff'],
    ['a string length in more bytes than needed', '78 01 61'],
    ['a byte-string length in more bytes than needed', '58 01 00'],
    ['an array length in more bytes than needed', '98 01 01'],
    ['a map length in more bytes than needed', 'b8 01 61 61 01'],
    ['an indefinite-length array', '9f 01 ff'],
    ['an indefinite-length string', '7f 61 61 ff'],
    ['undefined', 'f7'],
    ['a simple value', 'f0'],
    ['an unsupported tag', 'c1 01'],
    ['tag 42 with a non-minimal tag number', `d9 002a 58 25 00 ${cidHex}`, 'more bytes than necessary'],
    ['tag 42 without the leading 0x00', `d8 2a 58 24 ${cidHex}`, '0x00'],
    ['tag 42 around a string', 'd8 2a 61 61', 'byte string'],
    ['tag 42 around garbage bytes', 'd8 2a 43 00 ff ff', 'invalid CID'],
    ['a CID with a non-minimal version varint', `d8 2a 58 26 00 8100 ${cidHex.slice(2)}`],
    ['a CIDv0 written with its version and codec (not canonical), even with canonical checks off', `d8 2a 58 25 00 00 70 ${cidHex.slice(4)}`, 'not canonically encoded', { canonical: false }],
    ['invalid UTF-8', '62 c3 28', 'UTF-8'],
    ['an overlong UTF-8 encoding', '62 c0 af', 'UTF-8'],
    ['a UTF-16 surrogate in UTF-8', '63 eda080', 'UTF-8'],
    ['invalid UTF-8 in a map key', 'a1 62 c328 01', 'UTF-8'],
    ['a non-string map key', 'a1 01 01'],
    ['trailing bytes', '01 01'],
    ['empty input', ''],
    ['a truncated string', '62 61'],
    ['a truncated map', 'a2 61 61 01']
  ]
  for (const [name, bytes, fragment, options] of cases) {
    it(name, () => {
      assert.throws(() => decodeCbor(hex(bytes), { ...options, cid }), (err: Error) => {
        assert.equal(err.name, 'CborDecodeError', err.message)
        assert.ok(err.message.includes(`cid=${cid}`), err.message)
        if (fragment !== undefined) assert.ok(err.message.includes(fragment), `"${err.message}" should mention ${fragment}`)
        return true
      })
    })
  }

  for (const [name, bytes, fragment, options] of cases) {
    it(`checkDrisl decides as decodeCbor without the canonical check: ${name}`, () => {
      const input = hex(bytes)
      let refused: Error | undefined
      try {
        decodeCbor(input, { ...options, canonical: false, cid })
      } catch (err) {
        refused = err as Error
      }
      if (refused === undefined) {
        // refused only by the canonical check (key order, float width)
        assert.doesNotThrow(() => checkDrisl(input, { ...options, cid }))
        return
      }
      assert.throws(() => checkDrisl(input, { ...options, cid }), (err: Error) => {
        assert.equal(err.name, 'CborDecodeError', err.message)
        assert.ok(err.message.includes(`cid=${cid}`), err.message)
        if (fragment !== undefined && refused.message.includes(fragment)) assert.ok(err.message.includes(fragment), `"${err.message}" should mention ${fragment}`)
        return true
      })
    })
  }

  it('checkDrisl checks a value nested 200,000 levels deep, where the recursive decoder gives up', () => {
    const deep = new Uint8Array(200_001).fill(0x81)
    deep[200_000] = 0x01
    assert.throws(() => decodeCbor(deep), { name: 'CborDecodeError' })
    assert.equal(checkDrisl(deep), 'array')
    const maps = new Uint8Array(3 * 100_000 + 1)
    for (let i = 0; i < 100_000; i++) maps.set([0xa1, 0x61, 0x64], i * 3) // {"d": …
    maps[maps.length - 1] = 0xf6 // null
    assert.equal(checkDrisl(maps), 'map')
    assert.throws(() => checkDrisl(maps.subarray(0, maps.length - 1)), { name: 'CborDecodeError' })
  })

  it('very deep nesting fails cleanly instead of crashing', () => {
    const bytes = new Uint8Array(200_001).fill(0x81)
    bytes[200_000] = 0x01
    assert.throws(() => decodeCbor(bytes), { name: 'CborDecodeError' })
  })
})

describe('decodeCbor keeps integers to the data model\'s signed 64 bits', () => {
  const accepted: Array<[string, string, number | bigint]> = [
    ['2^53 - 1 (largest safe integer), as a number', '1b 001fffffffffffff', Number.MAX_SAFE_INTEGER],
    ['-(2^53 - 1), as a number', '3b 001ffffffffffffe', -Number.MAX_SAFE_INTEGER],
    ['2^53, as a bigint', '1b 0020000000000000', 2n ** 53n],
    ['2^63 - 1 (int64 max), as a bigint', '1b 7fffffffffffffff', 2n ** 63n - 1n],
    ['-2^63 (int64 min), as a bigint', '3b 7fffffffffffffff', -(2n ** 63n)]
  ]
  for (const [name, bytes, expected] of accepted) {
    it(`accepts ${name}`, () => {
      assert.equal(decodeCbor(hex(bytes)), expected)
      // and inside a record-like map, with canonical checks on
      assert.deepEqual(decodeCbor(hex(`a1 61 6e ${bytes}`)), { n: expected })
    })
  }

  const rejected: Array<[string, string]> = [
    ['2^63 (int64 max + 1)', '1b 8000000000000000'],
    ['2^64 - 1 (the largest CBOR unsigned integer)', '1b ffffffffffffffff'],
    ['-2^63 - 1 (int64 min - 1)', '3b 8000000000000000'],
    ['-2^64 (the smallest CBOR negative integer)', '3b ffffffffffffffff']
  ]
  for (const [name, bytes] of rejected) {
    it(`rejects ${name}`, () => {
      for (const input of [bytes, `a1 61 6e ${bytes}`, `82 01 ${bytes}`]) {
        for (const canonical of [true, false]) {
          assert.throws(() => decodeCbor(hex(input), { cid, canonical }), (err: Error) => {
            assert.equal(err.name, 'CborDecodeError', err.message)
            assert.match(err.message, /outside the signed 64-bit range/)
            assert.ok(err.message.includes(`cid=${cid}`), err.message)
            return true
          })
        }
      }
    })
  }
})

describe('decodeCbor agrees with @ipld/dag-cbor (differential, seeded)', () => {
  // xorshift32: deterministic, so a failure reproduces.
  let seed = 0x9e3779b9
  const rand = (n: number): number => {
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5
    return (seed >>> 0) % n
  }
  const links = [cid, cidForBytes(new Uint8Array([4]), RAW)]
  const strings = ['', 'a', 'e', 'k', 'p', 't', 'v', '$type', 'text', 'ü', '😀', 'x'.repeat(30), '\uFEFFbom', 'app.bsky.feed.post/3k2']
  const value = (depth: number): unknown => {
    switch (rand(depth > 3 ? 6 : 8)) {
      case 0: return null
      case 1: return rand(2) === 0
      case 2: return [0, 23, 24, 255, 256, 65535, 65536, 2 ** 32, 2 ** 40, -1, -24, -25, -257, -(2 ** 33)][rand(14)]
      case 3: return strings[rand(strings.length)]
      case 4: return new Uint8Array(rand(40)).map(() => rand(256))
      case 5: return links[rand(2)]
      case 6: return Array.from({ length: rand(5) }, () => value(depth + 1))
      default: {
        const out: Record<string, unknown> = {}
        for (let i = rand(6); i > 0; i--) out[strings[rand(strings.length)]] = value(depth + 1)
        return out
      }
    }
  }

  it('decodes 2,000 random data-model values back to themselves', () => {
    // (Compared with the original rather than with @ipld/dag-cbor's decoding,
    // which strips a leading byte-order mark from strings.)
    for (let i = 0; i < 2000; i++) {
      const original = value(0)
      const bytes = encodeCbor(original)
      assert.deepEqual(decodeCbor(bytes), original, `value ${i}: ${Buffer.from(bytes).toString('hex')}`)
    }
  })

  it('on 6,000 mutated encodings, accepts only canonical DRISL and rejects none of it', () => {
    let accepted = 0
    for (let i = 0; i < 6000; i++) {
      const bytes = Uint8Array.from(encodeCbor(value(0)))
      const mutated = mutate(bytes)
      let ours: unknown
      let ok = true
      try {
        ours = decodeCbor(mutated)
      } catch (err) {
        assert.equal((err as Error).name, 'CborDecodeError')
        ok = false
      }
      const hexed = Buffer.from(mutated).toString('hex')
      if (ok) {
        accepted++
        assert.ok(Buffer.from(encodeCbor(ours)).equals(mutated), `accepted non-canonical bytes ${hexed}`)
      } else {
        // If the reference decodes it, re-encodes it to the same bytes and it has
        // no floats and no integers beyond 64 signed bits, it was valid DRISL and
        // must not have been rejected.
        let reference: unknown
        try {
          reference = dagCbor.decode(mutated)
        } catch {
          continue
        }
        const canonical = Buffer.from(dagCbor.encode(reference)).equals(mutated)
        assert.ok(!canonical || hasFloat(reference) || hasWideInteger(reference), `rejected valid DRISL ${hexed}`)
      }
    }
    assert.ok(accepted > 100, `some mutations stay valid (${accepted})`)
  })

  function mutate (bytes: Uint8Array): Uint8Array {
    const copy = bytes.slice()
    switch (rand(4)) {
      case 0: if (copy.length > 0) copy[rand(copy.length)] ^= 1 << rand(8); return copy
      case 1: if (copy.length > 0) copy[rand(copy.length)] = rand(256); return copy
      case 2: return copy.subarray(0, rand(copy.length + 1))
      default: {
        const at = rand(copy.length + 1)
        return Uint8Array.from([...copy.subarray(0, at), rand(256), ...copy.subarray(at)])
      }
    }
  }

  it('checkDrisl (no recursion) accepts and rejects exactly what decodeCbor without the canonical check does, on 6,000 mutated encodings', () => {
    let accepted = 0
    for (let i = 0; i < 6000; i++) {
      const original = value(0)
      const mutated = i % 4 === 0 ? Uint8Array.from(encodeCbor(original)) : mutate(Uint8Array.from(encodeCbor(original)))
      const hexed = Buffer.from(mutated).toString('hex')
      let decoded: unknown
      let reference: string | undefined
      try {
        decoded = decodeCbor(mutated, { canonical: false })
      } catch (err) {
        reference = (err as Error).name
      }
      let ours: string | undefined
      let top: string | undefined
      try {
        top = checkDrisl(mutated)
      } catch (err) {
        ours = (err as Error).name
      }
      assert.equal(ours, reference, `decodeCbor ${reference ?? 'accepts'}, checkDrisl ${ours ?? 'accepts'}: ${hexed}`)
      if (reference === undefined) {
        accepted++
        assert.equal(top, topType(decoded), hexed)
      }
    }
    assert.ok(accepted > 1500, `some encodings stay valid (${accepted})`)
  })

  function topType (v: unknown): string {
    if (v === null) return 'null'
    if (typeof v === 'boolean') return 'boolean'
    if (typeof v === 'number' || typeof v === 'bigint') return 'integer'
    if (typeof v === 'string') return 'string'
    if (v instanceof Uint8Array) return 'bytes'
    if (Array.isArray(v)) return 'array'
    return CID.asCID(v) !== null ? 'cid' : 'map'
  }

  function hasWideInteger (v: unknown): boolean {
    if (typeof v === 'bigint') return v > 2n ** 63n - 1n || v < -(2n ** 63n)
    if (Array.isArray(v)) return v.some(hasWideInteger)
    if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array) && CID.asCID(v) === null) return Object.values(v).some(hasWideInteger)
    return false
  }

  function hasFloat (v: unknown): boolean {
    if (typeof v === 'number') return !Number.isInteger(v)
    if (Array.isArray(v)) return v.some(hasFloat)
    if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array) && CID.asCID(v) === null) return Object.values(v).some(hasFloat)
    return false
  }
})
