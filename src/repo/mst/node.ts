/**
 * MST node blocks: `{ l: CID | null, e: [{ p, k, v, t }] }` in DRISL CBOR, keys
 * prefix-compressed against the previous key of the same node.
 *
 * The node schema is small and fixed, so nodes are parsed by a dedicated reader
 * that accepts exactly the canonical encoding of a schema-valid node and nothing
 * else (map keys in canonical order, minimal integer and length headers, no
 * extra fields). That is both stricter and several times faster than a generic
 * DAG-CBOR decode followed by a re-encode to check canonical form. When the
 * reader rejects a block, the generic decoder runs once to tell "not DRISL"
 * (CborDecodeError) apart from "DRISL but not an MST node"
 * ({@link MstInvalidError}).
 */
import { CID } from 'multiformats/cid'
import { Digest } from 'multiformats/hashes/digest'
import { InvalidRecordPathError, MstInvalidError } from '../../errors.ts'
import { decodeCbor } from '../cbor.ts'
import { DAG_CBOR, SHA2_256 } from '../cid.ts'
import { mstKeyProblem } from './key.ts'

/** One key of a node, its record CID and the subtree to its right. */
export interface MstEntry {
  /** Full (prefix-decompressed) key: the record path. */
  key: string
  /** Link to the record. */
  value: CID
  /** Subtree with the keys between this key and the next one of the node. */
  right: CID | null
}

/** A decoded MST node. */
export interface MstNode {
  /** Subtree with the keys before the node's first key. */
  left: CID | null
  /** Entries in strictly increasing key order. */
  entries: MstEntry[]
}

class Reject extends Error {}

const KEY_E = 0x65
const KEY_L = 0x6c
const KEY_K = 0x6b
const KEY_P = 0x70
const KEY_T = 0x74
const KEY_V = 0x76

/**
 * Decodes an MST node strictly: exact schema, canonical encoding, `p` no longer
 * than the previous key and exactly the shared prefix, keys valid and strictly
 * increasing, subtree links dag-cbor sha2-256 CIDv1. Throws
 * {@link MstInvalidError} (structure), {@link InvalidRecordPathError} (a key) or
 * CborDecodeError (not DRISL at all), naming `cid` when given.
 */
export function decodeMstNode (bytes: Uint8Array, cid?: CID): MstNode {
  const reader = new NodeReader(bytes)
  let node: MstNode
  try {
    node = reader.node(cid)
  } catch (err) {
    if (!(err instanceof Reject)) throw err
    // Tell a CBOR-level fault apart from a schema fault; throws CborDecodeError.
    decodeCbor(bytes, { cid })
    throw new MstInvalidError(`node ${err.message}`, { cid })
  }
  return node
}

class NodeReader {
  readonly bytes: Uint8Array
  pos = 0

  constructor (bytes: Uint8Array) {
    this.bytes = bytes
  }

  node (cid: CID | undefined): MstNode {
    const bytes = this.bytes
    if (this.header(5) !== 2) throw new Reject('must be a map of exactly "e" and "l"')
    this.fieldName(KEY_E, 'e')
    const count = this.header(4)
    // Each entry takes at least 8 bytes, which bounds the allocation below.
    if (count > (bytes.length - this.pos) / 8) throw new Reject('entry count exceeds block size')
    const entries: MstEntry[] = new Array(count)
    let previous = ''
    for (let i = 0; i < count; i++) {
      if (this.header(5) !== 4) throw new Reject(`entry ${i} must be a map of exactly "k", "p", "t" and "v"`)
      this.fieldName(KEY_K, 'k')
      const suffixLength = this.header(2)
      const suffixStart = this.pos
      this.need(suffixLength)
      this.pos += suffixLength
      this.fieldName(KEY_P, 'p')
      const prefix = this.header(0)
      this.fieldName(KEY_T, 't')
      const right = this.nullableLink()
      this.fieldName(KEY_V, 'v')
      const value = this.link(false)

      if (prefix > previous.length) throw new Reject(`entry ${i} prefix length ${prefix} exceeds previous key length ${previous.length}`)
      let suffix = ''
      for (let j = suffixStart; j < suffixStart + suffixLength; j++) {
        const c = bytes[j]
        if (c > 0x7f) {
          const partial = previous.slice(0, prefix) + suffix
          throw new InvalidRecordPathError(partial, `non-ASCII byte in MST key (node ${String(cid)})`)
        }
        suffix += String.fromCharCode(c)
      }
      const key = prefix === 0 ? suffix : previous.slice(0, prefix) + suffix
      if (i > 0) {
        if (key <= previous) {
          throw new MstInvalidError(`keys not strictly increasing (${JSON.stringify(previous)} then ${JSON.stringify(key)})`, { cid, rpath: key })
        }
        // Compression is mandatory and deterministic: `p` must be the whole shared prefix.
        if (prefix < previous.length && suffixLength > 0 && bytes[suffixStart] === previous.charCodeAt(prefix)) {
          throw new MstInvalidError(`entry ${i} prefix length ${prefix} is shorter than the shared prefix`, { cid, rpath: key })
        }
      }
      const problem = mstKeyProblem(key)
      if (problem !== undefined) throw new InvalidRecordPathError(key, `${problem} (MST node ${String(cid)})`)
      entries[i] = { key, value, right }
      previous = key
    }
    this.fieldName(KEY_L, 'l')
    const left = this.nullableLink()
    if (this.pos !== bytes.length) throw new Reject('has trailing bytes')
    return { left, entries }
  }

  need (n: number): void {
    if (this.pos + n > this.bytes.length) throw new Reject('is truncated')
  }

  /** Reads a head of major type `major` with a minimally encoded argument. */
  header (major: number): number {
    this.need(1)
    const bytes = this.bytes
    const initial = bytes[this.pos++]
    if (initial >> 5 !== major) throw new Reject(`has major type ${initial >> 5} where ${major} is required`)
    const info = initial & 0x1f
    if (info < 24) return info
    if (info === 24) {
      this.need(1)
      const value = bytes[this.pos++]
      if (value < 24) throw new Reject('has a non-minimal integer')
      return value
    }
    if (info === 25) {
      this.need(2)
      const value = (bytes[this.pos] << 8) | bytes[this.pos + 1]
      this.pos += 2
      if (value < 0x100) throw new Reject('has a non-minimal integer')
      return value
    }
    if (info === 26) {
      this.need(4)
      const value = ((bytes[this.pos] << 24) >>> 0) + ((bytes[this.pos + 1] << 16) | (bytes[this.pos + 2] << 8) | bytes[this.pos + 3])
      this.pos += 4
      if (value < 0x10000) throw new Reject('has a non-minimal integer')
      return value
    }
    throw new Reject(info === 27 ? 'has an integer too large for an MST node' : 'has an indefinite length or reserved header')
  }

  fieldName (code: number, name: string): void {
    const bytes = this.bytes
    if (this.pos + 2 > bytes.length || bytes[this.pos] !== 0x61 || bytes[this.pos + 1] !== code) {
      throw new Reject(`lacks field "${name}" where the canonical encoding has it (missing, extra or misordered fields)`)
    }
    this.pos += 2
  }

  nullableLink (): CID | null {
    this.need(1)
    if (this.bytes[this.pos] === 0xf6) {
      this.pos++
      return null
    }
    return this.link(true)
  }

  link (subtree: boolean): CID {
    const bytes = this.bytes
    this.need(2)
    if (bytes[this.pos] !== 0xd8 || bytes[this.pos + 1] !== 0x2a) throw new Reject('has a non-link where a CID link is required')
    this.pos += 2
    const length = this.header(2)
    this.need(length)
    if (length < 2 || bytes[this.pos] !== 0x00) throw new Reject('has a CID link without the 0x00 multibase prefix')
    const start = this.pos + 1
    let cid: CID
    if (length === 37 && bytes[start] === 1 && bytes[start + 1] < 0x80 && bytes[start + 2] === SHA2_256 && bytes[start + 3] === 32) {
      // The shape of every CID in a repo (v1, one-byte codec, sha2-256):
      // built directly, skipping the generic varint parse and re-encode.
      const cidBytes = bytes.slice(start, start + 36)
      cid = new CID(1, cidBytes[1], new Digest(SHA2_256, 32, cidBytes.subarray(4), cidBytes.subarray(2)), cidBytes)
    } else {
      try {
        cid = CID.decode(bytes.subarray(start, this.pos + length))
      } catch (err) {
        throw new Reject(`has an invalid CID link (${(err as Error).message})`)
      }
    }
    this.pos += length
    if (subtree && (cid.version !== 1 || cid.code !== DAG_CBOR || cid.multihash.code !== SHA2_256 || cid.multihash.size !== 32)) {
      throw new Reject(`has a subtree link ${cid.toString()} that is not a dag-cbor sha2-256 CIDv1`)
    }
    return cid
  }
}

/**
 * Encodes a node canonically (DRISL, prefix-compressed keys). Keys must be valid
 * MST keys in strictly increasing order; anything else throws
 * {@link MstInvalidError} / {@link InvalidRecordPathError} rather than producing
 * a block no one else would produce.
 */
export function encodeMstNode (node: MstNode): Uint8Array {
  const entries = node.entries
  const prefixes = new Array<number>(entries.length)
  let size = 1 + 2 + headSize(entries.length) + 2 + linkSize(node.left)
  let previous = ''
  for (let i = 0; i < entries.length; i++) {
    const { key, value, right } = entries[i]
    const problem = mstKeyProblem(key)
    if (problem !== undefined) throw new InvalidRecordPathError(key, problem)
    if (i > 0 && key <= previous) {
      throw new MstInvalidError(`cannot encode node: keys not strictly increasing (${JSON.stringify(previous)} then ${JSON.stringify(key)})`, { rpath: key })
    }
    let prefix = 0
    const max = Math.min(key.length, previous.length)
    while (prefix < max && key.charCodeAt(prefix) === previous.charCodeAt(prefix)) prefix++
    prefixes[i] = prefix
    const suffix = key.length - prefix
    size += 1 + 2 + headSize(suffix) + suffix + 2 + headSize(prefix) + 2 + linkSize(right) + 2 + linkSize(value)
    previous = key
  }
  const out = new Uint8Array(size)
  let pos = 0
  const head = (major: number, value: number): void => {
    const m = major << 5
    if (value < 24) {
      out[pos++] = m | value
    } else if (value < 0x100) {
      out[pos++] = m | 24
      out[pos++] = value
    } else if (value < 0x10000) {
      out[pos++] = m | 25
      out[pos++] = value >> 8
      out[pos++] = value & 0xff
    } else {
      out[pos++] = m | 26
      out[pos++] = (value >>> 24) & 0xff
      out[pos++] = (value >> 16) & 0xff
      out[pos++] = (value >> 8) & 0xff
      out[pos++] = value & 0xff
    }
  }
  const field = (code: number): void => {
    out[pos++] = 0x61
    out[pos++] = code
  }
  const link = (cid: CID | null): void => {
    if (cid === null) {
      out[pos++] = 0xf6
      return
    }
    out[pos++] = 0xd8
    out[pos++] = 0x2a
    head(2, cid.bytes.length + 1)
    out[pos++] = 0
    out.set(cid.bytes, pos)
    pos += cid.bytes.length
  }

  head(5, 2)
  field(KEY_E)
  head(4, entries.length)
  for (let i = 0; i < entries.length; i++) {
    const { key, value, right } = entries[i]
    const prefix = prefixes[i]
    head(5, 4)
    field(KEY_K)
    head(2, key.length - prefix)
    for (let j = prefix; j < key.length; j++) out[pos++] = key.charCodeAt(j)
    field(KEY_P)
    head(0, prefix)
    field(KEY_T)
    link(right)
    field(KEY_V)
    link(value)
  }
  field(KEY_L)
  link(node.left)
  return out
}

function headSize (value: number): number {
  return value < 24 ? 1 : value < 0x100 ? 2 : value < 0x10000 ? 3 : 5
}

function linkSize (cid: CID | null): number {
  return cid === null ? 1 : 2 + headSize(cid.bytes.length + 1) + 1 + cid.bytes.length
}
