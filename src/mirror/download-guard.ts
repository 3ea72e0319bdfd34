/**
 * Bounds on what one repo download may write, so a hostile PDS cannot fill the
 * disk: a repo CAR may only bring what the repo can need.
 *
 * - **Reachability.** A block is reachable once the commit (the verified head, or
 *   a CAR root whose signature checks against the DID's key), or an MST node
 *   reachable from it, links to it. Reachable blocks are written as they arrive.
 *   Blocks not reachable (yet) are written too, while they stay within a small
 *   allowance (`unreachableBlocks`, `unreachableBytes`); one that would go past it
 *   stops the download with DownloadLimitError. A block that becomes reachable
 *   later (its parent node arrives after it) leaves the allowance again.
 * - **Size.** At most `maxBlocks` blocks and `maxBytes` bytes per sync, download
 *   and walk together: a PDS holds its users' keys, so it can sign a valid repo
 *   of any size, and only a size limit bounds that.
 *
 * The allowance matters because of CAR order. The reference PDS writes blocks by
 * rev, newest first, so a parent (rewritten whenever anything below it changes)
 * comes before its children, except among blocks of the same rev, which come in
 * CID order: a few blocks wait at a time. A repo imported in one piece (account
 * migration) is one rev, so it arrives in CID order, where most blocks come before
 * their parent: past the allowance the download stops and the walk fetches the
 * rest through the fetch chain (`getBlocks`), which asks for exactly the blocks
 * the tree lacks. Such a repo still syncs, more slowly; a PDS streaming junk gets
 * at most the allowance written, and collected when the sync ends.
 *
 * Defaults: the largest repos on the network hold a few million records (about
 * 1.3 blocks per record with the MST nodes, a few hundred bytes each, so a few
 * million blocks and a few GB); `maxBlocks` 20 million and `maxBytes` 8 GiB leave
 * room above that while still ending a hostile stream. The allowance, 10,000
 * blocks or 16 MiB, covers the out-of-order stretch of a rev-ordered CAR many times
 * over and is what junk can cost the disk: ~10,000 files, 1/1000 of a 10-million
 * block flood.
 */
import { DownloadLimitError } from '../errors.ts'
import type { Block } from '../repo/block-store.ts'
import { cidKey, type CID } from '../repo/cid.ts'
import { decodeCommit, verifyCommitSignature } from '../repo/commit.ts'
import type { PublicKey } from '../repo/keys.ts'
import { decodeMstNode } from '../repo/mst/node.ts'
import { DigestTable } from './digest-table.ts'

/** Limits on one sync's downloads (see the file header). */
export interface DownloadLimits {
  /** Blocks one sync may receive (download and walk). @default 20_000_000 */
  maxBlocks?: number
  /** Bytes one sync may receive. @default 8 GiB */
  maxBytes?: number
  /** Blocks not (yet) reachable from the commit that may be written. @default 10_000 */
  unreachableBlocks?: number
  /** Bytes of such blocks. @default 16 MiB */
  unreachableBytes?: number
}

export const DEFAULT_DOWNLOAD_LIMITS: Required<DownloadLimits> = {
  maxBlocks: 20_000_000,
  maxBytes: 8 * 1024 * 1024 * 1024,
  unreachableBlocks: 10_000,
  unreachableBytes: 16 * 1024 * 1024
}

export interface DownloadGuardInit {
  did: string
  /** The DID's signing key: a CAR root counts as a commit only if it is signed with it. */
  key: PublicKey
  /** The verified head's commit CID and tree root. */
  head: { cid: CID, data: CID }
  /** Named in errors. */
  url?: string
  limits?: DownloadLimits
  /** Reads back a block this sync already wrote (a parent can arrive after its children). */
  read: (cid: CID) => Uint8Array | undefined
}

/** Tracks one sync's blocks against the limits; throws DownloadLimitError past one. */
export class DownloadGuard {
  readonly limits: Required<DownloadLimits>
  readonly #did: string
  readonly #key: PublicKey
  readonly #url: string | undefined
  readonly #read: (cid: CID) => Uint8Array | undefined
  /** Blocks reachable from a trusted commit (arrived or not): one entry per block of the repo, so flat (digest-table.ts). */
  #reachable = new DigestTable()
  /** Blocks written but not reachable yet, with their size. */
  readonly #pending = new Map<string, { cid: CID, size: number }>()
  #pendingBytes = 0
  #blocks = 0
  #bytes = 0

  constructor (init: DownloadGuardInit) {
    this.limits = { ...DEFAULT_DOWNLOAD_LIMITS, ...stripUndefined(init.limits ?? {}) }
    this.#did = init.did
    this.#key = init.key
    this.#url = init.url
    this.#read = init.read
    this.#reachable.add(init.head.cid.multihash.bytes, 1)
    this.#reachable.add(init.head.data.multihash.bytes, 1)
  }

  /** Blocks received so far. */
  get blocks (): number {
    return this.#blocks
  }

  /** Blocks written that nothing reachable links to (yet). */
  get unreachable (): number {
    return this.#pending.size
  }

  /**
   * Counts a block received by the download (a CAR's `root` may be a newer commit
   * than the head). Throws DownloadLimitError when it may not be written: the
   * caller stops the download there.
   */
  admit (block: Block, root?: CID): void {
    this.count(block)
    if (this.#reachable.has(block.cid.multihash.bytes)) {
      this.#enter(block.cid, block.bytes)
      return
    }
    if (root !== undefined && block.cid.equals(root) && this.#trustedCommit(block)) {
      this.#reachable.add(block.cid.multihash.bytes, 1)
      this.#enter(block.cid, block.bytes)
      return
    }
    const key = cidKey(block.cid)
    if (this.#pending.has(key)) return
    const size = block.bytes.byteLength
    if (this.#pending.size + 1 > this.limits.unreachableBlocks) {
      throw new DownloadLimitError(`more than ${this.limits.unreachableBlocks} blocks not reachable from the commit`, { did: this.#did, url: this.#url, limit: 'unreachableBlocks', max: this.limits.unreachableBlocks })
    }
    if (this.#pendingBytes + size > this.limits.unreachableBytes) {
      throw new DownloadLimitError(`more than ${this.limits.unreachableBytes} bytes of blocks not reachable from the commit`, { did: this.#did, url: this.#url, limit: 'unreachableBytes', max: this.limits.unreachableBytes })
    }
    this.#pending.set(key, { cid: block.cid, size })
    this.#pendingBytes += size
  }

  /**
   * The download is over: only {@link count} is called from now on, so the
   * reachable set (an entry per block of the repo) is let go before the walk,
   * verification and the advance build their own.
   */
  settle (): void {
    this.#reachable = new DigestTable()
    this.#pending.clear()
    this.#pendingBytes = 0
  }

  /** Counts a block received any other way (the walk); only the size limits apply. */
  count (block: Block): void {
    this.#blocks++
    this.#bytes += block.bytes.byteLength
    if (this.#blocks > this.limits.maxBlocks) {
      throw new DownloadLimitError(`more than ${this.limits.maxBlocks} blocks`, { did: this.#did, url: this.#url, limit: 'maxBlocks', max: this.limits.maxBlocks })
    }
    if (this.#bytes > this.limits.maxBytes) {
      throw new DownloadLimitError(`more than ${this.limits.maxBytes} bytes`, { did: this.#did, url: this.#url, limit: 'maxBytes', max: this.limits.maxBytes })
    }
  }

  #trustedCommit (block: Block): boolean {
    try {
      const commit = decodeCommit(block.bytes, block.cid)
      if (commit.did !== this.#did) return false
      verifyCommitSignature(commit, this.#key, { cid: block.cid })
      this.#reachable.add(commit.data.multihash.bytes, 1)
      return true
    } catch {
      return false
    }
  }

  /**
   * A reachable block arrived: what it links to becomes reachable, and blocks that
   * were waiting for it leave the allowance (their own links followed, read back
   * from where they were written).
   */
  #enter (cid: CID, bytes: Uint8Array): void {
    const stack: Array<{ cid: CID, bytes: Uint8Array | undefined }> = [{ cid, bytes }]
    while (stack.length > 0) {
      const next = stack.pop() as { cid: CID, bytes: Uint8Array | undefined }
      const links = this.#links(next.cid, next.bytes)
      for (const link of links) {
        if (this.#reachable.has(link.multihash.bytes)) continue
        this.#reachable.add(link.multihash.bytes, 1)
        if (this.#pending.size === 0) continue
        const key = cidKey(link)
        const waiting = this.#pending.get(key)
        if (waiting === undefined) continue
        this.#pending.delete(key)
        this.#pendingBytes -= waiting.size
        stack.push({ cid: waiting.cid, bytes: this.#read(waiting.cid) })
      }
    }
  }

  /** What a block links to if it is an MST node (the links of anything else are not followed). */
  #links (cid: CID, bytes: Uint8Array | undefined): CID[] {
    // MST nodes are maps whose first key (canonical order) is `e`: a2 61 65
    if (bytes === undefined || bytes[0] !== 0xa2 || bytes[1] !== 0x61 || bytes[2] !== 0x65) return []
    try {
      const node = decodeMstNode(bytes, cid)
      const links: CID[] = []
      if (node.left !== null) links.push(node.left)
      for (const entry of node.entries) {
        links.push(entry.value)
        if (entry.right !== null) links.push(entry.right)
      }
      return links
    } catch {
      return [] // not a valid node: verification will say so if it matters
    }
  }
}

function stripUndefined<T extends object> (value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>
}
