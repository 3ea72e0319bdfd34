/**
 * Real repositories for tests and benchmarks, made by the reference implementation
 * (@atproto/repo), plus test-side tools to take a repo CAR apart, tamper with it and
 * put it back together (fixing up hashes and re-signing where a test needs that).
 *
 * The tools here deliberately do not use atmirror's own CAR/MST code: a test that
 * checks the engine must not build its inputs with the engine.
 *
 * Everything is deterministic for a given seed: keys come from a hash of the seed,
 * record keys and the rev are TIDs from a fixed clock, record contents from a seeded
 * PRNG, and ECDSA signatures are RFC 6979 deterministic.
 */
import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import * as dagCbor from '@ipld/dag-cbor'
import { P256Keypair, Secp256k1Keypair, type Keypair } from '@atproto/crypto'
import { MemoryBlockstore, Repo, WriteOpAction, getFullRepo, type RecordCreateOp } from '@atproto/repo'
import { CID, varint } from 'multiformats'
import * as Digest from 'multiformats/hashes/digest'

export type FixtureKeyType = 'k256' | 'p256'

export interface GenerateRepoOptions {
  /** How many records. */
  records: number
  /** Signing key type. @default 'k256' */
  keyType?: FixtureKeyType
  /** Seeds the key, the DID, record keys and contents. @default 1 */
  seed?: number
}

/** A repo made by @atproto/repo, with what the reference says it contains. */
export interface GeneratedRepo {
  did: string
  keyType: FixtureKeyType
  /** The signing key (tests re-sign tampered commits with it). */
  keypair: Keypair
  /** `did:key:…` of the signing key. */
  didKey: string
  /** The repo as a CAR file (getFullRepo order: commit, then MST nodes and records). */
  car: Uint8Array
  commit: string
  data: string
  rev: string
  /** Every record as @atproto/repo lists it, in MST order. */
  records: Array<{ rpath: string, cid: string }>
}

/** Fixed clock for TIDs: 2024-01-01T00:00:00Z in microseconds. */
const BASE_MICROS = 1_704_067_200_000_000

const S32 = '234567abcdefghijklmnopqrstuvwxyz'

/** A TID (13 chars, base32-sortable) for a timestamp in microseconds and a clock id. */
export function fixtureTid (micros: number, clockId: number): string {
  let value = (BigInt(micros) << 10n) | BigInt(clockId & 1023)
  let out = ''
  for (let i = 0; i < 13; i++) {
    out = S32[Number(value & 31n)] + out
    value >>= 5n
  }
  return out
}

/** A small seeded PRNG (mulberry32); good enough to vary record contents. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const WORDS = ['mirror', 'repo', 'block', 'peer', 'atproto', 'sky', 'tree', 'hash', 'signed', 'commit', 'record', 'merkle', 'search', 'bluesky', 'node', 'key']

/** A deterministic signing key for `seed`. */
export async function fixtureKeypair (keyType: FixtureKeyType = 'k256', seed = 1): Promise<Keypair> {
  const secret = createHash('sha256').update(`atmirror-fixture-${keyType}-${seed}`).digest()
  return keyType === 'k256'
    ? await Secp256k1Keypair.import(secret, { exportable: true })
    : await P256Keypair.import(secret, { exportable: true })
}

/** A plausible did:plc for `seed` (24 base32 chars). */
export function fixtureDid (seed = 1): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  const digest = createHash('sha256').update(`atmirror-fixture-did-${seed}`).digest()
  let id = ''
  for (let i = 0; i < 24; i++) id += alphabet[digest[i] % 32]
  return `did:plc:${id}`
}

/** The writes for a repo of `count` records: posts, likes, follows and one profile. */
export function fixtureWrites (count: number, did: string, seed = 1): RecordCreateOp[] {
  const random = prng(seed)
  const writes: RecordCreateOp[] = []
  for (let i = 0; i < count; i++) {
    const micros = BASE_MICROS + i * 1_000_003
    const rkey = fixtureTid(micros, seed % 1024)
    const createdAt = new Date(Math.floor(micros / 1000)).toISOString()
    const kind = i === 1 ? 'profile' : random() < 0.6 ? 'post' : random() < 0.75 ? 'like' : 'follow'
    if (kind === 'profile') {
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.actor.profile', rkey: 'self', record: { $type: 'app.bsky.actor.profile', displayName: `Fixture ${seed}`, description: 'a repo made for tests' } })
    } else if (kind === 'post') {
      const words = Array.from({ length: 3 + Math.floor(random() * 20) }, () => WORDS[Math.floor(random() * WORDS.length)])
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.feed.post', rkey, record: { $type: 'app.bsky.feed.post', text: `${words.join(' ')} #${i}`, langs: ['en'], createdAt } })
    } else if (kind === 'like') {
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.feed.like', rkey, record: { $type: 'app.bsky.feed.like', subject: { uri: `at://${fixtureDid(seed + 1)}/app.bsky.feed.post/${fixtureTid(micros - 7_000_000, 3)}`, cid: 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm' }, createdAt } })
    } else {
      writes.push({ action: WriteOpAction.Create, collection: 'app.bsky.graph.follow', rkey, record: { $type: 'app.bsky.graph.follow', subject: fixtureDid(seed * 100_000 + i), createdAt } })
    }
  }
  return writes
}

async function concat (chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

/** Builds a repo with @atproto/repo and exports it as a CAR. */
export async function generateRepo (options: GenerateRepoOptions): Promise<GeneratedRepo> {
  const keyType = options.keyType ?? 'k256'
  const seed = options.seed ?? 1
  const keypair = await fixtureKeypair(keyType, seed)
  const did = fixtureDid(seed)
  const storage = new MemoryBlockstore()
  const writes = fixtureWrites(options.records, did, seed)
  const rev = fixtureTid(BASE_MICROS + options.records * 1_000_003 + 1, 0)
  const commitData = await Repo.formatInitCommit(storage, did, keypair, writes, rev)
  await storage.applyCommit(commitData)
  const repo = await Repo.load(storage, commitData.cid)
  const leaves = await repo.data.list()
  const car = await concat(getFullRepo(storage, commitData.cid))
  return {
    did,
    keyType,
    keypair,
    didKey: keypair.did(),
    car,
    commit: commitData.cid.toString(),
    data: (await repo.data.getPointer()).toString(),
    rev,
    records: leaves.map(leaf => ({ rpath: leaf.key, cid: leaf.value.toString() }))
  }
}

/**
 * {@link generateRepo}, cached as `<dir>/repo-<keyType>-<records>-<seed>.car` plus a
 * JSON sidecar, so benchmarks do not pay for building the repo on every run.
 */
export async function cachedRepo (options: GenerateRepoOptions & { dir: string }): Promise<GeneratedRepo & { cached: boolean }> {
  const keyType = options.keyType ?? 'k256'
  const seed = options.seed ?? 1
  const base = join(options.dir, `repo-${keyType}-${options.records}-${seed}`)
  try {
    const [car, meta] = await Promise.all([readFile(`${base}.car`), readFile(`${base}.json`, 'utf8')])
    const parsed = JSON.parse(meta) as Omit<GeneratedRepo, 'car' | 'keypair'>
    return { ...parsed, car: new Uint8Array(car.buffer, car.byteOffset, car.byteLength), keypair: await fixtureKeypair(keyType, seed), cached: true }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const repo = await generateRepo({ ...options, keyType, seed })
  await mkdir(options.dir, { recursive: true })
  const { car, keypair, ...meta } = repo
  // write-then-rename so a concurrent or interrupted run never reads half a file
  await writeFile(`${base}.car.tmp`, car)
  await writeFile(`${base}.json.tmp`, JSON.stringify(meta))
  await rename(`${base}.car.tmp`, `${base}.car`)
  await rename(`${base}.json.tmp`, `${base}.json`)
  return { ...repo, cached: false }
}

// ---------------------------------------------------------------------------
// Taking a CAR apart and putting it back together (no verification on purpose)
// ---------------------------------------------------------------------------

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
