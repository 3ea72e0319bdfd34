/**
 * Test-side tools to take a repo CAR apart, tamper with it and put it back together
 * (fixing up hashes and re-signing where a test needs that), with no verification
 * on purpose.
 *
 * They deliberately do not use atmirror's own CAR/MST code: a test that checks the
 * engine must not build its inputs with the engine.
 */
import { createHash } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import type { Keypair } from '@atproto/crypto'
import { CID, varint } from 'multiformats'
import * as Digest from 'multiformats/hashes/digest'

export interface RawBlock {
  cid: CID
  bytes: Uint8Array
}

/** Splits a CAR v1 into its roots and blocks without checking anything. */
export function splitCar (car: Uint8Array): { roots: CID[], blocks: RawBlock[] } {
  const [headerLength, headerVarint] = varint.decode(car)
  const header = dagCbor.decode<{ version: number, roots: CID[] }>(car.subarray(headerVarint, headerVarint + headerLength))
  const blocks: RawBlock[] = []
  let offset = headerVarint + headerLength
  while (offset < car.length) {
    const [length, lengthVarint] = varint.decode(car, offset)
    const section = car.subarray(offset + lengthVarint, offset + lengthVarint + length)
    const [cid, bytes] = CID.decodeFirst(section)
    blocks.push({ cid, bytes })
    offset += lengthVarint + length
  }
  return { roots: header.roots.map(root => CID.decode(root.bytes)), blocks }
}

/** Writes a CAR v1 from roots and blocks, as given (bytes need not match CIDs). */
export function joinCar (roots: CID[], blocks: Iterable<RawBlock>): Uint8Array {
  const parts: Uint8Array[] = []
  const header = dagCbor.encode({ version: 1, roots })
  parts.push(varint.encodeTo(header.length, new Uint8Array(varint.encodingLength(header.length))), header)
  for (const block of blocks) {
    const length = block.cid.bytes.length + block.bytes.length
    parts.push(varint.encodeTo(length, new Uint8Array(varint.encodingLength(length))), block.cid.bytes, block.bytes)
  }
  return Buffer.concat(parts)
}

function cidOf (bytes: Uint8Array, codec: number = dagCbor.code): CID {
  return CID.createV1(codec, Digest.create(0x12, createHash('sha256').update(bytes).digest()))
}

/** MST key height: leading zero bits of SHA-256(key), counted in 2-bit steps. */
export function fixtureKeyHeight (key: string): number {
  const digest = createHash('sha256').update(key).digest()
  let zeros = 0
  for (const byte of digest) {
    if (byte === 0) { zeros += 8; continue }
    zeros += Math.clz32(byte) - 24
    break
  }
  return Math.floor(zeros / 2)
}

/** One MST node, decompressed, with its subtrees loaded. */
export interface TreeNode {
  cid: CID
  /** Codec of the CID `assembleRepo` links this node by (tests set raw, 0x55). @default 0x71 */
  codec?: number
  layer: number
  left: TreeNode | null
  entries: Array<{ key: string, value: CID, right: TreeNode | null }>
}

export interface UnsignedCommitFields {
  did: string
  version: number
  data: CID
  rev: string
  prev: CID | null
}

/** A repo CAR taken apart: the commit, the MST as a tree, and the other blocks by CID. */
export interface RepoParts {
  roots: CID[]
  commitCid: CID
  commit: UnsignedCommitFields & { sig: Uint8Array }
  tree: TreeNode
  /** Every block of the CAR by CID string (records, MST nodes, commit). */
  blocks: Map<string, RawBlock>
  /** CID strings of the MST nodes, root first (pre-order). */
  nodeCids: string[]
  /** CID strings of the record blocks, in MST order. */
  recordCids: string[]
}

interface RawNode { l: CID | null, e: Array<{ p: number, k: Uint8Array, v: CID, t: CID | null }> }

const utf8 = new TextDecoder()
const utf8Encoder = new TextEncoder()

/** Takes a (valid) repo CAR apart. */
export function openRepo (car: Uint8Array): RepoParts {
  const { roots, blocks: list } = splitCar(car)
  const blocks = new Map<string, RawBlock>()
  for (const block of list) blocks.set(block.cid.toString(), block)
  const commitCid = roots[0]
  const commit = dagCbor.decode<UnsignedCommitFields & { sig: Uint8Array }>(blocks.get(commitCid.toString())!.bytes)
  const nodeCids: string[] = []
  const recordCids: string[] = []
  const load = (cid: CID, layer: number | null): TreeNode => {
    const raw = dagCbor.decode<RawNode>(blocks.get(cid.toString())!.bytes)
    nodeCids.push(cid.toString())
    let previous = ''
    const keys = raw.e.map(entry => {
      previous = previous.slice(0, entry.p) + utf8.decode(entry.k)
      return previous
    })
    const nodeLayer = keys.length > 0 ? fixtureKeyHeight(keys[0]) : (layer ?? 0)
    const node: TreeNode = { cid, layer: nodeLayer, left: null, entries: [] }
    node.left = raw.l === null ? null : load(raw.l, nodeLayer - 1)
    raw.e.forEach((entry, i) => {
      recordCids.push(entry.v.toString())
      node.entries.push({ key: keys[i], value: entry.v, right: entry.t === null ? null : load(entry.t, nodeLayer - 1) })
    })
    return node
  }
  const tree = load(commit.data, null)
  return { roots, commitCid, commit, tree, blocks, nodeCids, recordCids }
}

/** Encodes one node the way @atproto/repo does (prefix-compressed keys, explicit nulls). */
export function encodeTreeNode (node: TreeNode, childCid: (child: TreeNode) => CID): Uint8Array {
  let previous = new Uint8Array(0)
  const e = node.entries.map(entry => {
    const key = utf8Encoder.encode(entry.key)
    let p = 0
    while (p < key.length && p < previous.length && key[p] === previous[p]) p++
    previous = key
    return { p, k: key.subarray(p), v: entry.value, t: entry.right === null ? null : childCid(entry.right) }
  })
  return dagCbor.encode({ l: node.left === null ? null : childCid(node.left), e })
}

/** Finds nodes in pre-order, with the path of nodes from the root. */
export function findNodes (tree: TreeNode, predicate: (node: TreeNode) => boolean): TreeNode[] {
  const found: TreeNode[] = []
  const visit = (node: TreeNode): void => {
    if (predicate(node)) found.push(node)
    if (node.left !== null) visit(node.left)
    for (const entry of node.entries) if (entry.right !== null) visit(entry.right)
  }
  visit(tree)
  return found
}

/**
 * Puts a (possibly modified) repo back together: re-encodes every MST node bottom-up
 * so all hashes are consistent, signs a new commit with `keypair` (fields overridable),
 * and writes a CAR of the commit, the nodes and every original non-MST, non-commit block.
 */
export async function assembleRepo (parts: RepoParts, keypair: Keypair, overrides: Partial<UnsignedCommitFields> & { sig?: Uint8Array } = {}): Promise<{ car: Uint8Array, commitCid: CID, data: CID }> {
  const nodeBlocks: RawBlock[] = []
  const encode = (node: TreeNode): CID => {
    const bytes = encodeTreeNode(node, encode)
    const cid = cidOf(bytes, node.codec)
    node.cid = cid
    nodeBlocks.push({ cid, bytes })
    return cid
  }
  const data = encode(parts.tree)
  const unsigned: UnsignedCommitFields = {
    did: overrides.did ?? parts.commit.did,
    version: overrides.version ?? parts.commit.version,
    data: overrides.data ?? data,
    rev: overrides.rev ?? parts.commit.rev,
    prev: overrides.prev === undefined ? parts.commit.prev : overrides.prev
  }
  const sig = overrides.sig ?? await keypair.sign(dagCbor.encode(unsigned))
  const commitBytes = dagCbor.encode({ ...unsigned, sig })
  const commitCid = cidOf(commitBytes)
  const skip = new Set([parts.commitCid.toString(), ...parts.nodeCids])
  const rest = [...parts.blocks.values()].filter(block => !skip.has(block.cid.toString()))
  const car = joinCar([commitCid], [{ cid: commitCid, bytes: commitBytes }, ...nodeBlocks.reverse(), ...rest])
  return { car, commitCid, data }
}

/** A copy of `car` with one byte of the block `cid` flipped (the CID left as it was). */
export function flipByteInBlock (car: Uint8Array, cid: string): Uint8Array {
  const { roots, blocks } = splitCar(car)
  let hit = false
  const changed = blocks.map(block => {
    if (block.cid.toString() !== cid) return block
    hit = true
    const bytes = Uint8Array.from(block.bytes)
    bytes[bytes.length >> 1] ^= 0x01
    return { cid: block.cid, bytes }
  })
  if (!hit) throw new Error(`no block ${cid} in CAR`)
  return joinCar(roots, changed)
}

/** A copy of `car` without the block `cid`. */
export function dropBlock (car: Uint8Array, cid: string): Uint8Array {
  const { roots, blocks } = splitCar(car)
  const kept = blocks.filter(block => block.cid.toString() !== cid)
  if (kept.length === blocks.length) throw new Error(`no block ${cid} in CAR`)
  return joinCar(roots, kept)
}

/**
 * A record key that sorts right after `key`, has MST height `height`, and is a valid
 * record path (the TID rkey plus a suffix of record-key characters).
 */
export function keyWithHeightAfter (key: string, height: number): string {
  for (let n = 0; n < 1_000_000; n++) {
    const candidate = `${key}x${n}`
    if (fixtureKeyHeight(candidate) === height) return candidate
  }
  throw new Error(`no key of height ${height} found after ${key}`)
}
