/**
 * A count per block, keyed by the block's multihash, kept in flat typed arrays
 * rather than in a `Map` of strings: what a sync holds per block of a whole repo
 * (the full sync's hold counts, the download guard's reachable set, the blob scan's
 * blocks seen) lives here.
 *
 * Why: as `Map<string, number>`/`Set<string>` each entry cost a 34-character key
 * string and a hash-table slot (about 100 bytes, ~13 MB per set for a
 * 100,000-record repo of 126,000 blocks), and every one of those objects is
 * copied by V8's scavenger and promoted, which grows the young generation and the
 * old one's garbage with it (the peak RSS of such a mirror was several times its
 * live heap). Here a sha2-256 multihash takes its 32 digest bytes and a 4-byte
 * count in pages of 8,192 entries, plus 8–16 bytes of open-addressing index (at
 * most half full): ~6 MB for those 126,000 blocks, and nothing for the scavenger
 * to copy. Pages are added rather than one array doubled: a replaced array stays
 * allocated until V8's next full collection (its small JS object was promoted long
 * before), and doubling left ~10 MB of such garbage per table. The slot comes
 * from the digest's first 8 bytes mixed with a random seed per table: the digest
 * alone would do for honest data, but a repo's author chooses its records, and
 * digests made to share their low bits (cheap to search for) would pile into one
 * probe run; under a seed nobody knows, only digests equal in all 8 bytes (2^64
 * work each) collide. Multihashes of another
 * kind or length (not made by atproto repos, but a CID may carry one) go to a
 * small `Map` beside it.
 */

import { SHA2_256 } from '../repo/cid.ts'

const DIGEST = 32
/** Entries per page (256 KiB of digests): pages are added, never copied. */
const PAGE_BITS = 13
const PAGE = 1 << PAGE_BITS
const INITIAL_INDEX = 2048

export class DigestTable {
  /** Entries in insertion order, in pages: digest bytes and counts. */
  readonly #digests: Uint8Array[] = []
  readonly #counts: Int32Array[] = []
  #size = 0
  /** Open addressing over the entries: entry index + 1, 0 for a free slot; at most half full. */
  #index = new Int32Array(INITIAL_INDEX)
  readonly #other = new Map<string, number>()
  readonly #seed = crypto.getRandomValues(new Uint32Array(2))

  /** Blocks in the table (including those whose count is 0). */
  get size (): number {
    return this.#size + this.#other.size
  }

  /** Adds `n` to the count of `multihash` (inserting it at 0 first). */
  add (multihash: Uint8Array, n: number): void {
    if (!isSha256(multihash)) {
      const key = latin1(multihash)
      this.#other.set(key, (this.#other.get(key) ?? 0) + n)
      return
    }
    const slot = this.#slot(multihash)
    const entry = this.#index[slot] - 1
    if (entry >= 0) {
      this.#counts[entry >>> PAGE_BITS][entry & (PAGE - 1)] += n
      return
    }
    const at = this.#size++
    const page = at >>> PAGE_BITS
    if (page === this.#digests.length) {
      this.#digests.push(new Uint8Array(PAGE * DIGEST))
      this.#counts.push(new Int32Array(PAGE))
    }
    this.#digests[page].set(multihash.subarray(2), (at & (PAGE - 1)) * DIGEST)
    this.#counts[page][at & (PAGE - 1)] = n
    if (this.#size * 2 > this.#index.length) this.#rehash()
    else this.#index[slot] = at + 1
  }

  /** The count of `multihash`, `undefined` when it was never added. */
  get (multihash: Uint8Array): number | undefined {
    if (!isSha256(multihash)) return this.#other.get(latin1(multihash))
    const entry = this.#index[this.#slot(multihash)] - 1
    return entry < 0 ? undefined : this.#counts[entry >>> PAGE_BITS][entry & (PAGE - 1)]
  }

  has (multihash: Uint8Array): boolean {
    return this.get(multihash) !== undefined
  }

  /** `[multihash, count]` for every block, in the order they were added (a fresh multihash each). */
  * entries (): IterableIterator<[Uint8Array, number]> {
    for (let entry = 0; entry < this.#size; entry++) {
      const at = (entry & (PAGE - 1)) * DIGEST
      const multihash = new Uint8Array(2 + DIGEST)
      multihash[0] = SHA2_256
      multihash[1] = DIGEST
      multihash.set(this.#digests[entry >>> PAGE_BITS].subarray(at, at + DIGEST), 2)
      yield [multihash, this.#counts[entry >>> PAGE_BITS][entry & (PAGE - 1)]]
    }
    for (const [key, count] of this.#other) yield [Uint8Array.from(Buffer.from(key, 'latin1')), count]
  }

  /** The index slot that holds `multihash`'s digest, or the free slot where it would go. */
  #slot (multihash: Uint8Array): number {
    const mask = this.#index.length - 1
    let slot = hashOf(multihash, 2, this.#seed) & mask
    for (let entry = this.#index[slot] - 1; entry >= 0; entry = this.#index[slot] - 1) {
      if (sameDigest(this.#digests[entry >>> PAGE_BITS], (entry & (PAGE - 1)) * DIGEST, multihash, 2)) return slot
      slot = (slot + 1) & mask
    }
    return slot
  }

  #rehash (): void {
    const index = new Int32Array(this.#index.length * 2)
    const mask = index.length - 1
    for (let entry = 0; entry < this.#size; entry++) {
      let slot = hashOf(this.#digests[entry >>> PAGE_BITS], (entry & (PAGE - 1)) * DIGEST, this.#seed) & mask
      while (index[slot] !== 0) slot = (slot + 1) & mask
      index[slot] = entry + 1
    }
    this.#index = index
  }
}

function isSha256 (multihash: Uint8Array): boolean {
  return multihash.byteLength === 2 + DIGEST && multihash[0] === SHA2_256 && multihash[1] === DIGEST
}

/** The slot hash of the digest at `offset`: its two first 32-bit words, each xored with the seed and mixed (murmur3's finalizer). */
function hashOf (bytes: Uint8Array, offset: number, seed: Uint32Array): number {
  const a = (bytes[offset] | bytes[offset + 1] << 8 | bytes[offset + 2] << 16 | bytes[offset + 3] << 24) ^ seed[0]
  const b = (bytes[offset + 4] | bytes[offset + 5] << 8 | bytes[offset + 6] << 16 | bytes[offset + 7] << 24) ^ seed[1]
  return mix((mix(a) + b) | 0) >>> 0
}

function mix (h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  return h ^ (h >>> 16)
}

function sameDigest (table: Uint8Array, at: number, bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < DIGEST; i++) {
    if (table[at + i] !== bytes[offset + i]) return false
  }
  return true
}

function latin1 (bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1')
}
