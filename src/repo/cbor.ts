/**
 * DAG-CBOR in atproto's strict profile (DRISL): definite lengths, minimal integer
 * and length encodings, string map keys in canonical order (shorter first, then
 * bytewise) without duplicates, only tag 42 (CIDs, canonically encoded), no
 * undefined/NaN/Infinity/simple values, valid UTF-8, and floats only as 64-bit.
 * atproto's data model also has no floats, so a float is rejected unless asked.
 *
 * Decoding is cborg's, with @ipld/dag-cbor's decode options made strict
 * (`strict`, `rejectDuplicateMapKeys`, no indefinite lengths, no undefined, no
 * NaN/Infinity) and a tag 42 decoder that requires the 0x00 prefix and a byte
 * string. Encoding is @ipld/dag-cbor's, which is canonical by construction.
 *
 * On top of the library, and without parsing any CBOR ourselves:
 * - Strings: cborg decodes UTF-8 leniently (invalid sequences become U+FFFD) and
 *   strips a leading U+FEFF (byte-order mark). A subclass of cborg's own
 *   tokenizer asks it to keep each string's bytes (`retainStringBytes`) and,
 *   when the decoded value could differ from them (a U+FFFD in it, or the bytes
 *   start with a BOM), decodes them again strictly: invalid UTF-8 is rejected
 *   and strings come back exactly as encoded. Without this, a valid record whose
 *   text starts with a BOM would decode to a different value, and any byte
 *   comparison against a re-encoding would falsely reject it.
 * - Floats: rejected on cborg's float token, so a float that holds an integer
 *   (1.0) is caught too, which a check on the decoded value could not see.
 * - Integers: the data model's integers are signed 64-bit
 *   (atproto.com/specs/data-model#data-types), but CBOR's go from -2^64 to
 *   2^64-1; those beyond int64 are rejected on the token. Integers past 2^53
 *   (JavaScript's safe range) decode as bigints: the spec only recommends
 *   staying within 53 bits, so they are valid data.
 * - CIDs: the tag 42 content must be a byte string of 0x00 and a CID in its one
 *   canonical binary form (multiformats also reads a v0 CID with its version and
 *   codec spelled out).
 * - Canonical form (`canonical`, the default): the decoded value is re-encoded
 *   with @ipld/dag-cbor and compared byte for byte. Of what the strict decode
 *   lets through, that catches map key order and float width.
 *
 * Where each check is used: commits and MST nodes must be canonical (a commit's
 * signature is over its re-encoding, and a node's bytes define the tree).
 * Commits pay for the re-encode; MST nodes get the same guarantee more cheaply
 * (see mst/node.ts: their fixed keys make the order checkable on the decoded
 * maps).
 *
 * Records are held to less, on purpose, following the repository spec
 * (atproto.com/specs/repository#cid-formats): CIDs of commits and MST nodes
 * "should be strictly constrained and enforced", while "more flexibility is
 * allowed in processing the 'leaf' links from MST to records, and
 * implementations should retain the exact CID links used for these mappings".
 * - Key order: verify.ts decodes record blocks with `canonical: false`. A
 *   record's bytes are bound to the CID the MST commits to by the hash check;
 *   with its keys out of order it is not what a canonical encoder would write,
 *   but it is what the account signed for, and a mirror must keep and serve
 *   exactly that. The strict decode still refuses every other non-canonical
 *   form. (The reference implementation does not check record encodings at
 *   all; the re-encode would also cost as much again as the decode.)
 * - Links: tag 42 may hold any well-formed CID. The data model
 *   (atproto.com/specs/data-model#link-and-cid-formats) blesses CIDv1 with the
 *   dag-cbor or raw codec, sha-256 "preferred" and more hash types expected, and
 *   the data validation guide (atproto.com/guides/data-validation) calls
 *   SHA-256 "encouraged (but not strictly required)". The blessed form is
 *   enforced where the specs make it a validity rule of the repo: a commit's
 *   `data` and `prev` (commit.ts), MST links and node CIDs (mst/node.ts), and
 *   a record's own CID (verify.ts). Inside a record a link is data: the
 *   reference PDS writes records holding a CIDv0 or dag-pb link
 *   (test/e2e/car-verify.test.ts), and refusing them would refuse real repos.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { decode as cborgDecode, decodeFirst as cborgDecodeFirst, Token, Tokenizer, Type } from 'cborg'
import type { DecodeOptions as CborgDecodeOptions, TagDecodeControl } from 'cborg'
import { CID } from 'multiformats/cid'
import { CborDecodeError, type CidLike } from '../errors.ts'

/** Options for {@link decodeCbor}. */
export interface DecodeOptions {
  /** Named in errors. */
  cid?: CidLike
  /** Reject floats (atproto data model). @default true */
  rejectFloats?: boolean
  /**
   * Require canonical form: the value is re-encoded with @ipld/dag-cbor and must
   * give the same bytes. Without it, the strict decode still refuses every
   * non-canonical encoding but two: map keys out of order, and (when floats are
   * allowed) floats narrower than 64 bits.
   * @default true
   */
  canonical?: boolean
}

const CID_TAG = 42

/**
 * Decodes the content of tag 42: a byte string of 0x00 and a binary CID, of any
 * version, codec and hash (see the module docs for why; callers that need the
 * blessed form check it).
 */
function decodeCidTag (decode: TagDecodeControl): CID {
  return cidFromTag(decode())
}

/** The CID in tag 42's content (see {@link decodeCidTag}). */
function cidFromTag (bytes: unknown): CID {
  if (!(bytes instanceof Uint8Array)) throw new Error('CID tag content is not a byte string')
  if (bytes.length === 0 || bytes[0] !== 0) throw new Error('CID tag content lacks the leading 0x00')
  let cid: CID
  try {
    // multiformats rejects non-minimal varints and trailing bytes
    cid = CID.decode(bytes.subarray(1))
  } catch (err) {
    throw new Error(`invalid CID in tag 42 (${(err as Error).message})`)
  }
  // but it reads `00 70 12 20 …` (a v0 CID with its version and codec spelled
  // out) as the 34-byte v0 form: one CID must have one encoding
  if (cid.bytes.byteLength !== bytes.length - 1) throw new Error('CID in tag 42 is not canonically encoded')
  return cid
}

const libraryOptions: CborgDecodeOptions = {
  ...dagCbor.decodeOptions,
  strict: true,
  rejectDuplicateMapKeys: true,
  allowIndefinite: false,
  allowUndefined: false,
  coerceUndefinedToNull: false,
  allowNaN: false,
  allowInfinity: false,
  allowBigInt: true,
  useMaps: false,
  retainStringBytes: true,
  tags: { [CID_TAG]: decodeCidTag }
}

const decodeCallOptions: CborgDecodeOptions = { ...libraryOptions }

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** The data model's integer range: signed 64-bit. */
const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n

/**
 * cborg's tokenizer with checks on the tokens it makes: strings are made exact
 * (see the module docs), integers must fit in 64 signed bits, and floats can be
 * refused.
 */
class DrislTokenizer extends Tokenizer {
  readonly rejectFloats: boolean
  /** Saw a float in 16 or 32 bits. */
  shortFloat = false

  constructor (data: Uint8Array, options: CborgDecodeOptions, rejectFloats: boolean) {
    super(data, options)
    this.rejectFloats = rejectFloats
  }

  override next (): Token {
    const start = this._pos
    const token = super.next()
    const type = token.type
    if (type === Type.string) {
      const bytes = token.byteValue
      // (the shared empty-string token carries no bytes)
      if (bytes !== undefined && ((bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) || (token.value as string).includes('\uFFFD'))) {
        let exact: string
        try {
          exact = strictUtf8.decode(bytes)
        } catch {
          this._pos = start // errors name the token's offset
          throw new Error('string is not valid UTF-8')
        }
        return new Token(Type.string, exact, token.encodedLength)
      }
    } else if (type === Type.float) {
      if (this.rejectFloats) {
        this._pos = start
        throw new Error('float not allowed in atproto data')
      }
      // head byte + 8: a float64 (only read to explain a failed canonical check)
      if (token.encodedLength !== 9) this.shortFloat = true
    } else if (typeof token.value === 'bigint') {
      // (cborg gives a bigint only past 2^53, so this costs nothing on common integers)
      const value = token.value
      if (value > INT64_MAX || value < INT64_MIN) {
        this._pos = start
        throw new Error(`integer ${value} is outside the signed 64-bit range of the data model`)
      }
    }
    return token
  }
}

/** Decodes one DRISL value; throws {@link CborDecodeError} naming `cid`. Byte strings in the result are copies. */
export function decodeCbor<T = unknown> (bytes: Uint8Array, options: DecodeOptions = {}): T {
  return decodeValue<T>(plain(bytes), options, false)[0]
}

/**
 * Decodes the first DRISL value of `bytes` (held to the same checks as
 * {@link decodeCbor}) and returns it with the bytes that follow it: for streams of
 * concatenated values, such as an event-stream frame (a header, then a body).
 */
export function decodeCborFirst<T = unknown> (bytes: Uint8Array, options: DecodeOptions = {}): [T, Uint8Array] {
  return decodeValue<T>(plain(bytes), options, true)
}

function decodeValue<T> (data: Uint8Array, options: DecodeOptions, first: boolean): [T, Uint8Array] {
  // (a plain view: cborg copies byte strings with `slice`, which on a Buffer would share memory)
  const tokenizer = new DrislTokenizer(data, libraryOptions, options.rejectFloats !== false)
  let value: unknown
  let end = data.byteLength
  try {
    // One options object for every call (cborg copies it anyway): decoding is
    // synchronous and nothing it calls decodes again, so the tokenizer slot is ours.
    decodeCallOptions.tokenizer = tokenizer
    if (first) {
      value = cborgDecodeFirst(data, decodeCallOptions)[0]
      end = tokenizer.pos()
    } else {
      value = cborgDecode(data, decodeCallOptions)
    }
  } catch (err) {
    // (a stack overflow on absurd nesting lands here too, as a clean error)
    throw new CborDecodeError(`${(err as Error).message} (at byte ${tokenizer.pos()})`, { cid: options.cid }, { cause: err })
  } finally {
    decodeCallOptions.tokenizer = undefined
  }
  const own = end === data.byteLength ? data : data.subarray(0, end)
  if (options.canonical !== false) {
    let again: Uint8Array
    try {
      again = dagCbor.encode(value)
    } catch (err) {
      throw new CborDecodeError(`cannot re-encode to check canonical form (${(err as Error).message})`, { cid: options.cid }, { cause: err })
    }
    if (!sameBytes(again, own)) {
      throw new CborDecodeError(`not in canonical form (${whyNotCanonical(own, again)})`, { cid: options.cid })
    }
  }
  return [value as T, data.subarray(end)]
}

/** What {@link checkDrisl} found at the top level. */
export type DrislTopType = 'map' | 'array' | 'cid' | 'bytes' | 'string' | 'integer' | 'boolean' | 'null' | 'float'

/** A container being read by {@link checkDrisl}: items (or map entries) still to come. */
interface Frame {
  remaining: number
  /** Map keys seen, for a map; undefined for an array. */
  keys: Set<string> | undefined
  /** A map's next token is a key. */
  expectKey: boolean
}

/**
 * Checks that `bytes` are one DRISL value, as {@link decodeCbor} with
 * `canonical: false` would accept them (the same tokenizer, so the same checks
 * on every token: minimal lengths, no indefinite lengths, exact UTF-8, no floats
 * unless allowed, integers within 64 bits; then string map keys without
 * duplicates, only tag 42 holding a canonical CID, and nothing after the value),
 * without building the value, and without recursion: nesting is bounded by the
 * bytes only, not by the call stack. Records are checked this way (the data model
 * sets no depth limit, and the reference implementation accepts records far deeper
 * than a recursive decoder can go). Returns the top-level value's type.
 *
 * @throws CborDecodeError naming `cid`
 */
export function checkDrisl (bytes: Uint8Array, options: Omit<DecodeOptions, 'canonical'> = {}): DrislTopType {
  const data = plain(bytes)
  const tokenizer = new DrislTokenizer(data, libraryOptions, options.rejectFloats !== false)
  let top: DrislTopType | undefined
  try {
    const stack: Frame[] = []
    do {
      if (tokenizer.done()) {
        throw new Error(top === undefined ? 'did not find any content to decode' : `found ${stack[stack.length - 1].keys === undefined ? 'array' : 'map'} but not enough entries`)
      }
      const frame = stack[stack.length - 1] as Frame | undefined
      const token = tokenizer.next()
      const type = token.type
      if (frame?.expectKey === true) {
        if (type !== Type.string) throw new Error(`non-string keys not supported (got ${type.name})`)
        const key = token.value as string
        if (frame.keys?.has(key) === true) throw new Error(`found repeat map key "${key}"`)
        frame.keys?.add(key)
        frame.expectKey = false
        continue
      }
      let opened: Frame | undefined
      let kind: DrislTopType
      if (type === Type.array) {
        kind = 'array'
        if ((token.value as number) > 0) opened = { remaining: token.value as number, keys: undefined, expectKey: false }
      } else if (type === Type.map) {
        kind = 'map'
        if ((token.value as number) > 0) opened = { remaining: token.value as number, keys: new Set(), expectKey: true }
      } else if (type === Type.tag) {
        if (token.value !== CID_TAG) throw new Error(`tag not supported (${String(token.value)})`)
        if (tokenizer.done()) throw new Error('tag content missing')
        const content = tokenizer.next()
        if (content.type === Type.break) throw new Error('got unexpected break')
        cidFromTag(content.type === Type.bytes ? content.value : undefined)
        kind = 'cid'
      } else if (type === Type.break) {
        throw new Error('got unexpected break')
      } else {
        kind = type === Type.uint || type === Type.negint ? 'integer' : type === Type.true || type === Type.false ? 'boolean' : type.name as DrislTopType
      }
      top ??= kind
      if (opened !== undefined) {
        stack.push(opened)
        continue
      }
      // a whole value is read: it completes its container, which may complete its own
      while (stack.length > 0) {
        const parent = stack[stack.length - 1]
        if (parent.keys !== undefined) parent.expectKey = true
        if (--parent.remaining > 0) break
        stack.pop()
      }
    } while (stack.length > 0)
    if (!tokenizer.done()) throw new Error('too many terminals, data makes no sense')
  } catch (err) {
    throw new CborDecodeError(`${(err as Error).message} (at byte ${tokenizer.pos()})`, { cid: options.cid }, { cause: err })
  }
  return top as DrislTopType
}

/**
 * Only on failure, to say more than "the bytes differ": decodes again into Maps,
 * which keep the keys in the order the bytes have them (a plain object puts
 * integer-like keys first), and looks for a pair out of canonical order.
 */
function whyNotCanonical (data: Uint8Array, again: Uint8Array): string {
  let at = 0
  while (at < again.length && at < data.length && again[at] === data[at]) at++
  const where = `the re-encoding differs from byte ${at}`
  try {
    const options = { ...libraryOptions, useMaps: true }
    const tokenizer = new DrislTokenizer(data, options, false)
    if (hasMisorderedKeys(cborgDecode(data, { ...options, tokenizer }))) return `map keys not in canonical order; ${where}`
    if (tokenizer.shortFloat) return `a float not encoded in 64 bits; ${where}`
  } catch {}
  return where
}

function hasMisorderedKeys (value: unknown): boolean {
  if (Array.isArray(value)) return value.some(hasMisorderedKeys)
  if (!(value instanceof Map)) return false
  let previous: Buffer | undefined
  for (const [key, item] of value) {
    const bytes = Buffer.from(key as string)
    // DAG-CBOR order: shorter keys first, then bytewise
    if (previous !== undefined && (previous.length > bytes.length || (previous.length === bytes.length && Buffer.compare(previous, bytes) > 0))) return true
    if (hasMisorderedKeys(item)) return true
    previous = bytes
  }
  return false
}

/**
 * Whether `bytes` start with the head of a definite-length map, as cborg's
 * tokenizer reads it; nothing after the head is decoded (for blocks that are
 * only hash-checked).
 */
export function startsWithMap (bytes: Uint8Array): boolean {
  try {
    return new Tokenizer(plain(bytes), libraryOptions).next().type === Type.map
  } catch {
    return false
  }
}

/** Encodes a value as DRISL (canonical DAG-CBOR), as a plain Uint8Array. */
export function encodeCbor (value: unknown): Uint8Array {
  return plain(dagCbor.encode(value))
}

/** Byte equality through node's native compare. */
function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b)
}

/** A plain Uint8Array view of the same memory (a Buffer's `slice` shares memory instead of copying). */
function plain (bytes: Uint8Array): Uint8Array {
  return bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}
