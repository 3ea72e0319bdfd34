/**
 * MST node blocks: `{ l: CID | null, e: [{ p, k, v, t }] }` in DRISL CBOR, keys
 * prefix-compressed against the previous key of the same node.
 *
 * Decoding is the strict library decode of ../cbor.ts, then a check of the
 * decoded value against the node schema: exact fields and types, `p` no longer
 * than the previous key and exactly the shared prefix, keys valid and strictly
 * increasing, subtree links dag-cbor sha2-256 CIDv1. Encoding is @ipld/dag-cbor's.
 *
 * Canonical form is required (a node's bytes define the tree), but checked
 * without re-encoding every node: the strict decode already refuses every
 * non-canonical encoding (non-minimal heads, indefinite lengths, floats,
 * duplicate keys, non-minimal CIDs, inexact strings) except map keys out of
 * order, and a schema-valid node has only the fixed one-letter keys, so their
 * order is checked on the decoded maps (which keep the order the bytes have).
 * A node that passes is therefore byte for byte what {@link encodeMstNode}
 * writes for it; test/repo/mst/node.test.ts checks that equivalence on mutated
 * encodings.
 */
import { CID } from 'multiformats/cid'
import { CborDecodeError, InvalidRecordPathError, MstInvalidError } from '../../errors.ts'
import { decodeCbor, encodeCbor } from '../cbor.ts'
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

/** The node as the spec's schema has it (what goes through DAG-CBOR). */
interface NodeData {
  l: CID | null
  e: Array<{ p: number, k: Uint8Array, v: CID, t: CID | null }>
}

/**
 * Decodes an MST node strictly (see the module docs). Throws
 * {@link MstInvalidError} (structure, or a `cid` that is not a dag-cbor sha2-256
 * CIDv1), {@link InvalidRecordPathError} (a key) or CborDecodeError (not
 * canonical DRISL), naming `cid` when given.
 */
export function decodeMstNode (bytes: Uint8Array, cid?: CID): MstNode {
  const fail = (reason: string, rpath?: string): never => {
    throw new MstInvalidError(`node ${reason}`, { cid, rpath })
  }
  // The repository spec: MST links with another CID format make the whole tree
  // invalid. Links inside nodes are checked below; this covers the node's own
  // CID (a tree root handed in), which hashes alike under the raw codec.
  if (cid !== undefined && !isNodeCid(cid)) fail(`CID ${cid.toString()} is not a dag-cbor sha2-256 CIDv1`)
  const data = decodeCbor<unknown>(bytes, { cid, canonical: false })
  if (!isMap(data) || !hasFields(data, NODE_FIELDS, cid)) return fail('must be a map of exactly "e" and "l"')
  const left = subtreeLink(data.l, 'l', fail)
  const list = data.e
  if (!Array.isArray(list)) return fail('field "e" must be an array')
  const entries: MstEntry[] = new Array(list.length)
  let previous = ''
  for (let i = 0; i < list.length; i++) {
    const entry: unknown = list[i]
    if (!isMap(entry) || !hasFields(entry, ENTRY_FIELDS, cid)) return fail(`entry ${i} must be a map of exactly "k", "p", "t" and "v"`)
    const { k: suffixBytes, p: prefix } = entry
    if (!(suffixBytes instanceof Uint8Array)) return fail(`entry ${i} key suffix "k" must be bytes`)
    if (typeof prefix !== 'number' || !Number.isInteger(prefix) || prefix < 0) return fail(`entry ${i} prefix length "p" must be a non-negative integer`)
    const right = subtreeLink(entry.t, `e[${i}].t`, fail)
    const value = CID.asCID(entry.v)
    if (value === null) return fail(`entry ${i} value "v" must be a CID link`)

    if (prefix > previous.length) return fail(`entry ${i} prefix length ${prefix} exceeds previous key length ${previous.length}`)
    let suffix = ''
    for (let j = 0; j < suffixBytes.length; j++) {
      const c = suffixBytes[j]
      if (c > 0x7f) throw new InvalidRecordPathError(previous.slice(0, prefix) + suffix, `non-ASCII byte in MST key (node ${String(cid)})`)
      suffix += String.fromCharCode(c)
    }
    const key = prefix === 0 ? suffix : previous.slice(0, prefix) + suffix
    if (i > 0) {
      if (key <= previous) {
        throw new MstInvalidError(`keys not strictly increasing (${JSON.stringify(previous)} then ${JSON.stringify(key)})`, { cid, rpath: key })
      }
      // Compression is mandatory and deterministic: `p` must be the whole shared prefix.
      if (prefix < previous.length && suffix.length > 0 && suffix.charCodeAt(0) === previous.charCodeAt(prefix)) {
        throw new MstInvalidError(`entry ${i} prefix length ${prefix} is shorter than the shared prefix`, { cid, rpath: key })
      }
    }
    const problem = mstKeyProblem(key)
    if (problem !== undefined) throw new InvalidRecordPathError(key, `${problem} (MST node ${String(cid)})`)
    entries[i] = { key, value, right }
    previous = key
  }
  return { left, entries }
}

/**
 * Encodes a node canonically (DRISL, prefix-compressed keys) with
 * @ipld/dag-cbor. Keys must be valid MST keys in strictly increasing order;
 * anything else throws {@link MstInvalidError} / {@link InvalidRecordPathError}
 * rather than producing a block no one else would produce.
 */
export function encodeMstNode (node: MstNode): Uint8Array {
  const entries = node.entries
  const e: NodeData['e'] = new Array(entries.length)
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
    // MST keys are ASCII (checked above), so the key's UTF-8 is one byte per character
    const k = new Uint8Array(key.length - prefix)
    for (let j = prefix; j < key.length; j++) k[j - prefix] = key.charCodeAt(j)
    e[i] = { p: prefix, k, v: value, t: right }
    previous = key
  }
  const data: NodeData = { e, l: node.left }
  return encodeCbor(data)
}

function isMap (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Uint8Array) && CID.asCID(value) === null
}

/** The fields of a node and of an entry, in canonical order (one letter each, so bytewise). */
const NODE_FIELDS = ['e', 'l']
const ENTRY_FIELDS = ['k', 'p', 't', 'v']

/**
 * Whether `map` has exactly `fields`. In another order it is not canonical
 * DRISL: CborDecodeError, as for any other non-canonical encoding. (The keys of
 * a decoded map come in the order of the bytes: cborg inserts them as it reads,
 * and none of these is an integer-like key, which JavaScript would move first.)
 */
function hasFields (map: Record<string, unknown>, fields: string[], cid: CID | undefined): boolean {
  let i = 0
  let ordered = true
  for (const key in map) {
    if (i === fields.length || !fields.includes(key)) return false
    if (key !== fields[i]) ordered = false
    i++
  }
  if (i !== fields.length) return false
  // (duplicates were refused by the decoder, so these are all the fields)
  if (!ordered) throw new CborDecodeError('map keys not in canonical order', { cid })
  return true
}

/** A subtree link: null, or a dag-cbor sha2-256 CIDv1. */
function subtreeLink (value: unknown, field: string, fail: (reason: string) => never): CID | null {
  if (value === null) return null
  const cid = CID.asCID(value)
  if (cid === null) return fail(`field "${field}" must be a CID link or null`)
  if (!isNodeCid(cid)) return fail(`has a subtree link ${cid.toString()} that is not a dag-cbor sha2-256 CIDv1`)
  return cid
}

function isNodeCid (cid: CID): boolean {
  return cid.version === 1 && cid.code === DAG_CBOR && cid.multihash.code === SHA2_256 && cid.multihash.size === 32
}
