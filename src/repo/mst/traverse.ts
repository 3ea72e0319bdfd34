/**
 * The one MST traversal primitive: every reader of a whole tree (the key-order
 * walk and verification, the missing-block search, the fetching walker, GC,
 * export, the reprovider, the diff) enters nodes through an {@link MstTraversal}
 * and schedules them as it likes (depth first, breadth first, pipelined as
 * blocks arrive). The traversal owns what must be the same everywhere:
 *
 * - decoding a node and, unless `check: false`, checking it against its place
 *   (layer, key range, root rules; see ./check.ts);
 * - the places of a node's subtrees, named once, in key order;
 * - a node reached twice. A tree reaches each node once, so a second link to a
 *   node is a DAG posing as a tree: {@link MstInvalidError}, before a consumer
 *   walks (or counts, or exports) the shared subtree again, which nested repeats
 *   would make exponential. Without checks the traversal remembers every node it
 *   places. With checks it need not, and by default does not (verification is
 *   the hot path): places at one layer have disjoint key ranges (each node
 *   splits its own range among its subtrees), so a node with keys fails its key
 *   range or height check at its second place, and an entry-less one passes the
 *   repeat on to its only subtree, one layer down, until a node with keys
 *   fails. A caller that leaves placed subtrees unentered (the diff) asks for
 *   `remember` as well;
 * - a node the store lacks: {@link MissingBlockError} naming its place, or,
 *   with `onMissing: 'skip'`, reported and its subtree left out.
 *
 * Remembered nodes are kept for the whole traversal, so memory grows with
 * the number of nodes placed (about a quarter of the records), never with the
 * records. Records are the consumer's business: the same record CID may
 * legitimately sit under two keys.
 */
import type { CID } from 'multiformats/cid'
import { MissingBlockError, MstInvalidError } from '../../errors.ts'
import type { RepoLogger } from '../log.ts'
import { DEFAULT_MAX_NODE_ENTRIES, checkNode, rootLayer } from './check.ts'
import { keyHeight } from './key.ts'
import { decodeMstNode, type MstNode } from './node.ts'

/** Where a node sits in the tree. */
export interface MstPlace {
  cid: CID
  /** Layer of the node (-1 for the empty tree's root; for the root, the height of its keys). */
  layer: number
  /** Distance from the root (the root is 0). */
  depth: number
  /** Keys of the subtree are greater than this (`null`: no bound). */
  after: string | null
  /** Keys of the subtree are less than this (`null`: no bound). */
  before: string | null
  /** The node linking to it (`null` for the root). */
  parent: CID | null
}

/** A node the store lacked: its place. */
export type MissingMstNode = MstPlace

/** A node entered by a traversal: decoded, checked, and its subtrees placed. */
export interface MstVisit {
  cid: CID
  bytes: Uint8Array
  node: MstNode
  place: MstPlace
  /** Place of the subtree left of the first key (`null`: none). */
  left: MstPlace | null
  /** Place of each entry's right subtree, by entry index (`null`: none). */
  rights: Array<MstPlace | null>
}

export interface MstTraversalInit {
  /**
   * Check every node against its place (layer, key range, entry count, root
   * rules). Off only for trees that are verified anyway (the fetching walker) or
   * were verified before they were stored.
   *
   * @default true
   */
  check?: boolean
  /**
   * Remember every node placed, so a node reached twice is refused where it is
   * placed. Needed where checks cannot see a repeat: without checks, or where the
   * caller leaves placed subtrees unentered (the diff skips subtrees common to
   * both trees).
   *
   * @default true without `check`, false with it
   */
  remember?: boolean
  /** Most entries a node may hold (checked with `check`). @default 1024 */
  maxNodeEntries?: number
  /**
   * What {@link MstTraversal.missing} does: `'throw'` a {@link MissingBlockError},
   * or `'skip'`: report the node to `onMissingNode` and leave its subtree out.
   * @default 'throw'
   */
  onMissing?: 'throw' | 'skip'
  /** Called for every skipped missing node (with `onMissing: 'skip'`). */
  onMissingNode?: (missing: MissingMstNode) => void
  /** Debug logger (see ../log.ts). @default none */
  log?: RepoLogger
}

/**
 * One traversal of the tree at `root`. Start from {@link MstTraversal.root},
 * hand each place's block to {@link MstTraversal.enter} (in any order, each place
 * once) and go on with the places of the visit's subtrees; tell
 * {@link MstTraversal.missing} about a place whose block is absent.
 */
export class MstTraversal {
  /** The root's place. */
  readonly root: MstPlace
  readonly #check: boolean
  readonly #maxEntries: number
  readonly #skip: boolean
  readonly #onMissingNode?: (missing: MissingMstNode) => void
  readonly #log?: RepoLogger
  /**
   * With `remember`: every node placed so far, by the first four bytes of its
   * digest (a small integer hashes far faster than a string of the CID); CIDs
   * that share them are told apart exactly.
   */
  readonly #placed: Map<number, CID | CID[]> | undefined
  #entered = 0

  constructor (root: CID, init: MstTraversalInit = {}) {
    this.#check = init.check ?? true
    this.#maxEntries = init.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES
    this.#skip = init.onMissing === 'skip'
    this.#onMissingNode = init.onMissingNode
    this.#log = init.log
    this.root = { cid: root, layer: -1, depth: 0, after: null, before: null, parent: null }
    if (init.remember ?? !this.#check) {
      this.#placed = new Map()
      this.#firstTime(root)
    }
  }

  /** Nodes entered so far. */
  get entered (): number {
    return this.#entered
  }

  /**
   * Decodes the block of the node at `place`, checks it there and places its
   * subtrees.
   *
   * @throws MstInvalidError (structure, or a subtree already reached elsewhere in
   * the tree), InvalidRecordPathError or CborDecodeError
   */
  enter (place: MstPlace, bytes: Uint8Array): MstVisit {
    const { cid } = place
    const node = decodeMstNode(bytes, cid)
    let layer = place.layer
    if (place.parent === null) {
      // the root's layer is the height of its keys, known only now
      layer = this.#check ? rootLayer(node, cid) : node.entries.length > 0 ? keyHeight(node.entries[0].key) : -1
      place.layer = layer
      if (layer >= 0 && this.#check) checkNode(node, cid, { layer, after: null, before: null, root: true }, this.#maxEntries)
    } else if (this.#check) {
      checkNode(node, cid, { layer, after: place.after, before: place.before, root: false }, this.#maxEntries)
    }
    this.#entered++
    const { entries } = node
    const n = entries.length
    const left = node.left === null ? null : this.#place(node.left, place, place.after, n > 0 ? entries[0].key : place.before)
    const rights = new Array<MstPlace | null>(n)
    for (let i = 0; i < n; i++) {
      const entry = entries[i]
      rights[i] = entry.right === null ? null : this.#place(entry.right, place, entry.key, i + 1 < n ? entries[i + 1].key : place.before)
    }
    return { cid, bytes, node, place, left, rights }
  }

  /**
   * Reports that the store lacks the node at `place`: throws
   * {@link MissingBlockError} naming its place, or with `onMissing: 'skip'` calls
   * `onMissingNode` and returns (the subtree is left out).
   */
  missing (place: MstPlace): void {
    if (!this.#skip) throw missingNodeError(place)
    this.#log?.('MST node %c missing, skipped', place.cid)
    this.#onMissingNode?.(place)
  }

  /** Remembers `cid`; false when it was placed before. */
  #firstTime (cid: CID): boolean {
    const placed = this.#placed as Map<number, CID | CID[]>
    const d = cid.multihash.digest
    const key = d[0] | (d[1] << 8) | (d[2] << 16) | (d[3] << 24)
    const found = placed.get(key)
    if (found === undefined) {
      placed.set(key, cid)
      return true
    }
    if (Array.isArray(found)) {
      for (const other of found) if (other.equals(cid)) return false
      found.push(cid)
      return true
    }
    if (found.equals(cid)) return false
    placed.set(key, [found, cid])
    return true
  }

  #place (cid: CID, parent: MstPlace, after: string | null, before: string | null): MstPlace {
    if (this.#placed !== undefined && !this.#firstTime(cid)) {
      throw new MstInvalidError(`node ${cid.toString()} reached twice (linked again from ${parent.cid.toString()})`, { cid, rpath: after ?? before ?? undefined })
    }
    return { cid, layer: parent.layer - 1, depth: parent.depth + 1, after, before, parent: parent.cid }
  }
}

/** The error for a missing node, naming its place in the tree. */
export function missingNodeError (missing: MissingMstNode): MissingBlockError {
  const range = missing.parent === null
    ? 'MST root node'
    : `MST node (layer ${missing.layer}, keys${missing.after !== null ? ` after ${JSON.stringify(missing.after)}` : ''}${missing.before !== null ? ` before ${JSON.stringify(missing.before)}` : ''}, linked from ${String(missing.parent)})`
  return new MissingBlockError(missing.cid, { what: range, rpath: missing.after ?? missing.before ?? undefined })
}
