/**
 * DAG-CBOR in atproto's strict profile (DRISL): definite lengths, minimal integer
 * and length encodings, string map keys in canonical order (shorter first, then
 * bytewise) without duplicates, only tag 42 (CIDs, canonically encoded), no
 * undefined/NaN/Infinity/simple values, valid UTF-8, and floats only as 64-bit.
 * atproto's data model also has no floats, so a float is rejected unless asked.
 *
 * Decoding is a small strict decoder written for exactly this profile: one pass
 * over the bytes that checks every rule as it reads, instead of a general CBOR
 * decoder plus re-encoding to compare. Every block of a repo goes through it,
 * so it is on the hot path of verification. Encoding is @ipld/dag-cbor's, which
 * is canonical by construction.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { Digest } from 'multiformats/hashes/digest'
import { CborDecodeError, type CidLike } from '../errors.ts'

/** Options for {@link decodeCbor}. */
export interface DecodeOptions {
  /** Named in errors. */
  cid?: CidLike
  /** Reject floats (atproto data model). @default true */
  rejectFloats?: boolean
  /** Enforce canonical form (key order, 64-bit floats). @default true */
  canonical?: boolean
}

/** Deepest nesting of arrays and maps accepted (far beyond any real record). */
export const MAX_CBOR_DEPTH = 512

/** Decodes one DRISL value; throws {@link CborDecodeError} naming `cid`. Byte strings in the result are copies. */
export function decodeCbor<T = unknown> (bytes: Uint8Array, options: DecodeOptions = {}): T {
  const decoder = new Decoder(bytes, options.rejectFloats !== false, options.canonical !== false)
  let value: unknown
  try {
    value = decoder.item(0)
    if (decoder.pos !== bytes.length) decoder.fail(`${bytes.length - decoder.pos} trailing bytes after the value`)
  } catch (err) {
    if (err instanceof Violation) throw new CborDecodeError(`${err.message} (at byte ${err.offset})`, { cid: options.cid })
    throw new CborDecodeError((err as Error).message, { cid: options.cid }, { cause: err })
  }
  return value as T
}

/** Encodes a value as DRISL (canonical DAG-CBOR), as a plain Uint8Array. */
export function encodeCbor (value: unknown): Uint8Array {
  const bytes = dagCbor.encode(value)
  // cborg may hand back a Buffer, whose `slice` shares memory instead of copying.
  return bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

class Violation extends Error {
  readonly offset: number
  constructor (message: string, offset: number) {
    super(message)
    this.offset = offset
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
const CID_TAG = 42
const SHORT_STRING = 24

class Decoder {
  readonly data: Uint8Array
  readonly rejectFloats: boolean
  readonly canonical: boolean
  pos = 0
  #view: DataView | undefined

  constructor (data: Uint8Array, rejectFloats: boolean, canonical: boolean) {
    // A plain Uint8Array view: on a Buffer, `slice` would share memory instead of copying.
    this.data = data.constructor === Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    this.rejectFloats = rejectFloats
    this.canonical = canonical
  }

  /** Made on first use: most blocks hold no integer of 256 or more. */
  get view (): DataView {
    this.#view ??= new DataView(this.data.buffer, this.data.byteOffset, this.data.byteLength)
    return this.#view
  }

  fail (message: string, offset = this.pos): never {
    throw new Violation(message, offset)
  }

  item (depth: number): unknown {
    const start = this.pos
    if (start >= this.data.length) this.fail('unexpected end of data')
    const initial = this.data[this.pos++]
    const major = initial >> 5
    const minor = initial & 31
    switch (major) {
      case 0: return this.argument(minor, start)
      case 1: {
        const n = this.argument(minor, start)
        return typeof n === 'number' && n < Number.MAX_SAFE_INTEGER ? -1 - n : -1n - BigInt(n)
      }
      case 2: {
        const length = this.length(minor, start)
        return this.data.slice(this.pos, this.advance(length))
      }
      case 3: return this.string(this.length(minor, start))
      case 4: {
        const count = this.count(minor, start, depth)
        const out = new Array(count)
        for (let i = 0; i < count; i++) out[i] = this.item(depth + 1)
        return out
      }
      case 5: return this.map(this.count(minor, start, depth), depth)
      case 6: return this.tag(minor, start)
      default: return this.simple(minor, start)
    }
  }

  /** The integer argument of an item header, minimally encoded; a bigint above 2^53 - 1. */
  argument (minor: number, start: number): number | bigint {
    if (minor < 24) return minor
    const view = this.view
    let value: number | bigint
    let min: number
    switch (minor) {
      case 24: value = this.data[this.need(1)]; min = 24; break
      case 25: value = view.getUint16(this.need(2)); min = 0x100; break
      case 26: value = view.getUint32(this.need(4)); min = 0x10000; break
      case 27: {
        const at = this.need(8)
        const high = view.getUint32(at)
        if (high === 0) this.fail('integer encoded in more bytes than needed', start)
        value = high < 0x200000 ? high * 0x100000000 + view.getUint32(at + 4) : view.getBigUint64(at)
        return value
      }
      case 31: return this.fail('indefinite-length items are not allowed', start)
      default: return this.fail(`reserved additional info ${minor}`, start)
    }
    if (value < min) this.fail('integer encoded in more bytes than needed', start)
    return value
  }

  /** A byte or string length: a number that fits in the rest of the input. */
  length (minor: number, start: number): number {
    const n = this.argument(minor, start)
    if (typeof n !== 'number' || n > this.data.length - this.pos) this.fail('length runs past the end of data', start)
    return n as number
  }

  /** An array or map count, bounded by the remaining input (every item takes a byte) and the depth. */
  count (minor: number, start: number, depth: number): number {
    if (depth >= MAX_CBOR_DEPTH) this.fail(`nested deeper than ${MAX_CBOR_DEPTH}`, start)
    return this.length(minor, start)
  }

  /** Checks `n` more bytes are there and returns the offset they start at. */
  need (n: number): number {
    const at = this.pos
    if (at + n > this.data.length) this.fail('unexpected end of data')
    this.pos = at + n
    return at
  }

  advance (n: number): number {
    this.pos += n
    return this.pos
  }

  string (length: number): string {
    const data = this.data
    const start = this.pos
    const end = start + length
    this.pos = end
    if (length < SHORT_STRING) {
      // Short ASCII (keys, NSIDs, rkeys) is the common case and cheaper by hand.
      let out = ''
      for (let i = start; i < end; i++) {
        const c = data[i]
        if (c >= 0x80) return this.utf8(start, end)
        out += String.fromCharCode(c)
      }
      return out
    }
    return this.utf8(start, end)
  }

  utf8 (start: number, end: number): string {
    try {
      return strictUtf8.decode(this.data.subarray(start, end))
    } catch {
      return this.fail('string is not valid UTF-8', start)
    }
  }

  map (count: number, depth: number): Record<string, unknown> {
    const data = this.data
    const out: Record<string, unknown> = {}
    let lastStart = -1
    let lastLength = 0
    for (let i = 0; i < count; i++) {
      const keyAt = this.pos
      if (keyAt >= data.length) this.fail('unexpected end of data')
      const initial = data[this.pos++]
      if (initial >> 5 !== 3) this.fail('map key is not a string', keyAt)
      const length = this.length(initial & 31, keyAt)
      const keyStart = this.pos
      const key = this.string(length)
      if (lastStart >= 0) {
        // Canonical order: shorter keys first, then bytewise on the UTF-8.
        let order = lastLength - length
        for (let j = 0; order === 0 && j < length; j++) order = data[lastStart + j] - data[keyStart + j]
        if (order === 0) this.fail(`duplicate map key ${JSON.stringify(key)}`, keyAt)
        if (order > 0 && this.canonical) this.fail('map keys not in canonical order', keyAt)
      }
      // In canonical order keys are strictly increasing, hence unique; otherwise look.
      if (!this.canonical && Object.hasOwn(out, key)) this.fail(`duplicate map key ${JSON.stringify(key)}`, keyAt)
      lastStart = keyStart
      lastLength = length
      const value = this.item(depth + 1)
      if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true })
      else out[key] = value
    }
    return out
  }

  tag (minor: number, start: number): CID {
    const number = this.argument(minor, start)
    if (number !== CID_TAG) this.fail(`tag ${number} is not allowed (only 42)`, start)
    const at = this.pos
    if (at >= this.data.length) this.fail('unexpected end of data')
    const initial = this.data[this.pos++]
    if (initial >> 5 !== 2) this.fail('CID tag content is not a byte string', at)
    const length = this.length(initial & 31, at)
    const bytes = this.data.slice(this.pos, this.advance(length))
    if (length === 0 || bytes[0] !== 0) this.fail('CID tag content lacks the leading 0x00', at)
    // The CIDs atproto uses (v1, dag-cbor or raw, sha2-256) are canonical by
    // construction in their 36-byte form: build them without re-parsing.
    if (length === 37 && bytes[1] === 1 && (bytes[2] === 0x71 || bytes[2] === 0x55) && bytes[3] === 0x12 && bytes[4] === 0x20) {
      return new CID(1, bytes[2], new Digest(0x12, 32, bytes.subarray(5), bytes.subarray(3)), bytes.subarray(1))
    }
    let cid: CID
    try {
      cid = CID.decode(bytes.subarray(1))
    } catch (err) {
      return this.fail(`invalid CID in tag 42 (${(err as Error).message})`, at)
    }
    if (cid.bytes.byteLength !== length - 1) this.fail('CID not canonically encoded', at)
    return cid
  }

  simple (minor: number, start: number): unknown {
    switch (minor) {
      case 20: return false
      case 21: return true
      case 22: return null
      case 23: return this.fail('undefined is not allowed', start)
      case 25: case 26: case 27: {
        if (this.rejectFloats) this.fail('float not allowed in atproto data', start)
        if (this.canonical && minor !== 27) this.fail('float not encoded in 64 bits', start)
        const value = minor === 27
          ? this.view.getFloat64(this.need(8))
          : minor === 26 ? this.view.getFloat32(this.need(4)) : halfFloat(this.view.getUint16(this.need(2)))
        if (!Number.isFinite(value)) this.fail('NaN and Infinity are not allowed', start)
        return value
      }
      case 31: return this.fail('indefinite-length items are not allowed', start)
      default: return this.fail(`simple value ${minor} is not allowed`, start)
    }
  }
}

function halfFloat (bits: number): number {
  const exponent = (bits >> 10) & 0x1f
  const fraction = bits & 0x3ff
  const sign = bits & 0x8000 ? -1 : 1
  if (exponent === 0) return sign * fraction * 2 ** -24
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15)
}
