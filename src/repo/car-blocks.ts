/**
 * The blocks of a CAR in memory, keyed by SHA-256 digest, in a few large buffers
 * rather than a JS object per block: `car verify` and `car ls` of a CAR with
 * millions of tiny blocks must fit in memory (a Map of objects cost about 360 bytes
 * of heap per block, and a 17-million-block CAR ran V8 out of memory).
 *
 * - Every block is copied into an arena of 16 MiB chunks as `digest (32 bytes) ‖
 *   bytes`: the input's own buffers are not kept alive by views into them.
 * - An open-addressing hash table (linear probing, at most 3/4 full) in one
 *   Uint32Array holds four words per slot: a tag (digest bytes 4–7), the arena
 *   chunk, the offset in it, and the block length + 1 (0: empty slot) with the top
 *   bit set once the block has been read. The slot is chosen by digest bytes 0–3
 *   (SHA-256 output is uniform, so no further hashing); a tag match is confirmed
 *   against the full digest in the arena.
 *
 * About 37 bytes per block plus its own size in the arena, and 16 bytes per slot:
 * a 3-million-block CAR of tiny blocks needs some 200 MB, where the objects needed
 * over 1 GB.
 *
 * The codec is left out, as content-addressed stores do (the same bytes are the
 * same block, whatever they are read as), so a lookup under a raw CID finds a
 * DAG-CBOR block: the codec is checked where a CID is used instead, for the commit
 * (`assertCommitCid`), MST nodes (`decodeMstNode`) and records (`assertRecordCid`).
 * Reads are synchronous, which lets the MST walker go without a promise per node.
 */
import type { CID } from 'multiformats/cid'
import type { ReadonlyBlockStore } from './block-store.ts'
import { SHA2_256 } from './cid.ts'

const CHUNK_BYTES = 16 * 1024 * 1024
const DIGEST_BYTES = 32
const INITIAL_SLOTS = 1024
/** Words per slot: tag, chunk, offset, meta. */
const WORDS = 4
const TOUCHED = 0x80000000
const LENGTH_MASK = 0x7fffffff

export class CarBlocks implements ReadonlyBlockStore {
  #table = new Uint32Array(INITIAL_SLOTS * WORDS)
  #mask = INITIAL_SLOTS - 1
  readonly #chunks: Uint8Array[] = []
  #chunk: Uint8Array = new Uint8Array(0)
  #used = 0
  #size = 0
  /** Distinct blocks read so far. */
  touched = 0
  /** Their total size. */
  touchedBytes = 0

  /** Distinct blocks held. */
  get size (): number {
    return this.#size
  }

  /** Adds a block (its bytes already checked against `cid`); returns false for a duplicate. */
  add (cid: CID, bytes: Uint8Array): boolean {
    const digest = cid.multihash.digest
    if (cid.multihash.code !== SHA2_256 || digest.byteLength !== DIGEST_BYTES) throw new TypeError(`CarBlocks holds sha2-256 blocks only, not ${cid.toString()}`)
    if (this.#find(digest) >= 0) return false
    if ((this.#size + 1) * 4 > (this.#mask + 1) * 3) this.#grow()
    // the arena record: digest, then bytes
    const need = DIGEST_BYTES + bytes.byteLength
    if (this.#chunk.byteLength - this.#used < need) {
      this.#chunk = new Uint8Array(Math.max(CHUNK_BYTES, need))
      this.#chunks.push(this.#chunk)
      this.#used = 0
    }
    const offset = this.#used
    this.#chunk.set(digest, offset)
    this.#chunk.set(bytes, offset + DIGEST_BYTES)
    this.#used += need
    this.#place(this.#table, this.#mask, tagOf(digest), slotOf(digest), this.#chunks.length - 1, offset, bytes.byteLength + 1)
    this.#size++
    return true
  }

  get (cid: CID): Uint8Array | undefined {
    const at = this.#lookup(cid)
    if (at < 0) return undefined
    const table = this.#table
    const meta = table[at + 3]
    const length = (meta & LENGTH_MASK) - 1
    if ((meta & TOUCHED) === 0) {
      table[at + 3] = meta | TOUCHED
      this.touched++
      this.touchedBytes += length
    }
    const start = table[at + 2] + DIGEST_BYTES
    return this.#chunks[table[at + 1]].subarray(start, start + length)
  }

  has (cid: CID): boolean {
    return this.#lookup(cid) >= 0
  }

  #lookup (cid: CID): number {
    const { code, digest } = cid.multihash
    // only sha2-256 blocks get past the CAR reader
    if (code !== SHA2_256 || digest.byteLength !== DIGEST_BYTES) return -1
    return this.#find(digest)
  }

  /** The table index (first word) of the slot holding `digest`, or -1. */
  #find (digest: Uint8Array): number {
    const table = this.#table
    const mask = this.#mask
    const tag = tagOf(digest)
    for (let slot = slotOf(digest) & mask; ; slot = (slot + 1) & mask) {
      const at = slot * WORDS
      if (table[at + 3] === 0) return -1
      if (table[at] === tag && this.#sameDigest(table[at + 1], table[at + 2], digest)) return at
    }
  }

  #sameDigest (chunk: number, offset: number, digest: Uint8Array): boolean {
    const stored = this.#chunks[chunk]
    for (let i = 0; i < DIGEST_BYTES; i++) {
      if (stored[offset + i] !== digest[i]) return false
    }
    return true
  }

  #place (table: Uint32Array, mask: number, tag: number, start: number, chunk: number, offset: number, meta: number): void {
    let slot = start & mask
    while (table[slot * WORDS + 3] !== 0) slot = (slot + 1) & mask
    const at = slot * WORDS
    table[at] = tag
    table[at + 1] = chunk
    table[at + 2] = offset
    table[at + 3] = meta
  }

  #grow (): void {
    const old = this.#table
    const slots = (this.#mask + 1) * 2
    const table = new Uint32Array(slots * WORDS)
    const mask = slots - 1
    for (let at = 0; at < old.length; at += WORDS) {
      if (old[at + 3] === 0) continue
      const chunk = this.#chunks[old[at + 1]]
      const offset = old[at + 2]
      const start = ((chunk[offset] << 24) | (chunk[offset + 1] << 16) | (chunk[offset + 2] << 8) | chunk[offset + 3]) >>> 0
      this.#place(table, mask, old[at], start, old[at + 1], offset, old[at + 3])
    }
    this.#table = table
    this.#mask = mask
  }
}

/** Digest bytes 0–3: where the slot search starts. */
function slotOf (digest: Uint8Array): number {
  return ((digest[0] << 24) | (digest[1] << 16) | (digest[2] << 8) | digest[3]) >>> 0
}

/** Digest bytes 4–7: a quick check before the whole digest is compared. */
function tagOf (digest: Uint8Array): number {
  return ((digest[4] << 24) | (digest[5] << 16) | (digest[6] << 8) | digest[7]) >>> 0
}
