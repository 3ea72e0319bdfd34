/**
 * Changing an MST held in a block store, possibly only partly: put and delete
 * keys, producing new nodes in memory. Only the nodes an operation must read
 * are loaded (the path to the key, the subtrees a new key splits, the subtrees
 * a deleted key's neighbours merge, the top of the tree when it shrinks), so
 * the editor works on the few blocks of a `#commit` event and says exactly
 * which blocks it needed ({@link MstEditor.loaded}).
 *
 * Operations follow the canonical-tree rules, so any sequence of puts and
 * deletes gives the same root as building the final mapping from scratch.
 */
import type { CID } from 'multiformats/cid'
import { MissingBlockError } from '../../errors.ts'
import type { Block, BlockStoreOptions, ReadonlyBlockStore } from '../block-store.ts'
import { cidForBytes, cidKey } from '../cid.ts'
import { DEFAULT_MAX_NODE_ENTRIES, checkNode, isPromise, rootLayer } from './check.ts'
import { ensureValidMstKey, keyHeight } from './key.ts'
import { decodeMstNode, encodeMstNode, type MstNode } from './node.ts'

/** A node in slot form: subtree i sits before key i, subtree n after the last. */
interface Node {
  keys: string[]
  values: CID[]
  subtrees: Array<CID | null>
}

/** What a put or delete did. */
export interface MstEditResult {
  /** The new root. */
  root: CID
  /** The key's value before the operation (`null`: it was absent). */
  prev: CID | null
}

export interface MstEditorInit {
  /** Most entries a loaded node may hold. @default 1024 */
  maxNodeEntries?: number
}

/**
 * Puts and deletes keys on trees in a block store. Roots go in and come out as
 * CIDs; every node the editor creates is kept in memory ({@link blocks}) and
 * read from there, so a sequence of operations touches the store only for
 * nodes it has never seen. A node the store lacks throws
 * {@link MissingBlockError}; a loaded node that breaks the structure rules
 * throws MstInvalidError.
 */
export class MstEditor {
  readonly #store: ReadonlyBlockStore
  readonly #maxEntries: number
  readonly #created = new Map<string, { cid: CID, bytes: Uint8Array, node: Node }>()
  readonly #cache = new Map<string, Node>()
  readonly #loaded: CID[] = []
  readonly #heights = new Map<string, number>()
  #options: BlockStoreOptions = {}

  constructor (store: ReadonlyBlockStore, init: MstEditorInit = {}) {
    this.#store = store
    this.#maxEntries = init.maxNodeEntries ?? DEFAULT_MAX_NODE_ENTRIES
  }

  /** Nodes read from the store so far, in first-read order. */
  get loaded (): CID[] {
    return [...this.#loaded]
  }

  /** Every node block created so far (including ones later superseded). */
  blocks (): Block[] {
    return [...this.#created.values()].map(({ cid, bytes }) => ({ cid, bytes }))
  }

  /** Sets `key` to `value` in the tree at `root`. */
  async put (root: CID, key: string, value: CID, options: BlockStoreOptions = {}): Promise<MstEditResult> {
    ensureValidMstKey(key)
    this.#options = options
    const node = await this.#get(root, undefined, true)
    if (node.keys.length === 0) {
      const cid = this.#persist({ keys: [key], values: [value], subtrees: [null, null] }) as CID
      return { root: cid, prev: null }
    }
    const out = { prev: null as CID | null }
    const result = await this.#put(node, root, key, value, this.#height(key), this.#height(node.keys[0]), out)
    return { root: result.cid, prev: out.prev }
  }

  /** Removes `key` from the tree at `root` (`prev: null` and the same root when absent). */
  async delete (root: CID, key: string, options: BlockStoreOptions = {}): Promise<MstEditResult> {
    ensureValidMstKey(key)
    this.#options = options
    const node = await this.#get(root, undefined, true)
    if (node.keys.length === 0) return { root, prev: null }
    const out = { prev: null as CID | null }
    const result = await this.#delete(node, root, key, this.#height(key), this.#height(node.keys[0]), out)
    if (out.prev === null) return { root, prev: null }
    const top = await this.#squashTop(result, this.#height(node.keys[0]))
    return { root: top ?? this.#persistEmpty(), prev: out.prev }
  }

  /** Looks `key` up in the tree at `root`, loading only the path to it. */
  async get (root: CID, key: string, options: BlockStoreOptions = {}): Promise<CID | null> {
    this.#options = options
    let node = await this.#get(root, undefined, true)
    if (node.keys.length === 0) return null
    let layer = this.#height(node.keys[0])
    const height = this.#height(key)
    while (true) {
      if (height > layer) return null
      const i = gteIndex(node.keys, key)
      if (i < node.keys.length && node.keys[i] === key) return node.values[i]
      const sub = node.subtrees[i]
      if (sub === null) return null
      layer--
      node = await this.#get(sub, layer, false)
    }
  }

  async #put (node: Node, cid: CID | null, key: string, value: CID, height: number, layer: number, out: { prev: CID | null }): Promise<{ cid: CID, node: Node }> {
    if (height > layer) {
      // Grow: the old tree becomes the left subtree of an entry-less node one layer up.
      const wrapper: Node = { keys: [], values: [], subtrees: [cid ?? this.#persist(node)] }
      return await this.#put(wrapper, null, key, value, height, layer + 1, out)
    }
    const i = gteIndex(node.keys, key)
    if (height < layer) {
      const sub = node.subtrees[i]
      const child = sub === null ? emptyNode() : await this.#get(sub, layer - 1, false)
      const result = await this.#put(child, sub, key, value, height, layer - 1, out)
      const subtrees = node.subtrees.slice()
      subtrees[i] = result.cid
      return this.#stored({ keys: node.keys, values: node.values, subtrees })
    }
    if (i < node.keys.length && node.keys[i] === key) {
      out.prev = node.values[i]
      if (node.values[i].equals(value) && cid !== null) return { cid, node }
      const values = node.values.slice()
      values[i] = value
      return this.#stored({ keys: node.keys, values, subtrees: node.subtrees })
    }
    const [left, right] = await this.#split(node.subtrees[i], key, layer - 1)
    return this.#stored({
      keys: insertAt(node.keys, i, key),
      values: insertAt(node.values, i, value),
      subtrees: [...node.subtrees.slice(0, i), left, right, ...node.subtrees.slice(i + 1)]
    })
  }

  async #split (cid: CID | null, key: string, layer: number): Promise<[CID | null, CID | null]> {
    if (cid === null) return [null, null]
    const node = await this.#get(cid, layer, false)
    const i = gteIndex(node.keys, key)
    const [left, right] = await this.#split(node.subtrees[i], key, layer - 1)
    return [
      this.#persist({ keys: node.keys.slice(0, i), values: node.values.slice(0, i), subtrees: [...node.subtrees.slice(0, i), left] }),
      this.#persist({ keys: node.keys.slice(i), values: node.values.slice(i), subtrees: [right, ...node.subtrees.slice(i + 1)] })
    ]
  }

  async #delete (node: Node, cid: CID, key: string, height: number, layer: number, out: { prev: CID | null }): Promise<CID | null> {
    if (height > layer) return cid
    const i = gteIndex(node.keys, key)
    if (height < layer) {
      const sub = node.subtrees[i]
      if (sub === null) return cid
      const child = await this.#get(sub, layer - 1, false)
      const result = await this.#delete(child, sub, key, height, layer - 1, out)
      if (out.prev === null) return cid
      const subtrees = node.subtrees.slice()
      subtrees[i] = result
      return this.#persist({ keys: node.keys, values: node.values, subtrees })
    }
    if (i === node.keys.length || node.keys[i] !== key) return cid
    out.prev = node.values[i]
    const merged = await this.#merge(node.subtrees[i], node.subtrees[i + 1], layer - 1)
    return this.#persist({
      keys: removeAt(node.keys, i),
      values: removeAt(node.values, i),
      subtrees: [...node.subtrees.slice(0, i), merged, ...node.subtrees.slice(i + 2)]
    })
  }

  async #merge (left: CID | null, right: CID | null, layer: number): Promise<CID | null> {
    if (left === null) return right
    if (right === null) return left
    const a = await this.#get(left, layer, false)
    const b = await this.#get(right, layer, false)
    const middle = await this.#merge(a.subtrees[a.subtrees.length - 1], b.subtrees[0], layer - 1)
    return this.#persist({
      keys: [...a.keys, ...b.keys],
      values: [...a.values, ...b.values],
      subtrees: [...a.subtrees.slice(0, -1), middle, ...b.subtrees.slice(1)]
    })
  }

  /** Drops entry-less nodes from the top, as the canonical tree has none there. */
  async #squashTop (cid: CID | null, layer: number): Promise<CID | null> {
    while (cid !== null) {
      const node = await this.#get(cid, layer, true)
      if (node.keys.length > 0 || node.subtrees[0] === null) return cid
      cid = node.subtrees[0]
      layer--
    }
    return null
  }

  #height (key: string): number {
    let height = this.#heights.get(key)
    if (height === undefined) {
      height = keyHeight(key)
      this.#heights.set(key, height)
    }
    return height
  }

  /** A node by CID: created here, seen before, or loaded (and checked) now. */
  async #get (cid: CID, layer: number | undefined, top: boolean): Promise<Node> {
    const key = cidKey(cid)
    const created = this.#created.get(key)
    if (created !== undefined) return created.node
    const cached = this.#cache.get(key)
    if (cached !== undefined) return cached
    let bytes = this.#store.get(cid, this.#options)
    if (isPromise(bytes)) bytes = await bytes
    if (bytes === undefined) {
      throw new MissingBlockError(cid, { what: layer === undefined ? 'MST node (top of the tree being edited)' : `MST node (layer ${layer})` })
    }
    this.#options.signal?.throwIfAborted()
    const decoded = decodeMstNode(bytes, cid)
    // A node reached from the top may be an entry-less top left by a squash; its
    // layer is whatever its keys say, and its shape was checked when it was reached.
    const nodeLayer = layer ?? rootLayer(decoded, cid)
    if (nodeLayer >= 0) {
      checkNode(decoded, cid, { layer: nodeLayer, after: null, before: null, root: top && layer === undefined }, this.#maxEntries)
    }
    const node = toSlots(decoded)
    this.#cache.set(key, node)
    this.#loaded.push(cid)
    return node
  }

  #stored (node: Node): { cid: CID, node: Node } {
    return { cid: this.#persist(node) as CID, node }
  }

  /** Encodes a new node (or returns `null` for a node with nothing in it). */
  #persist (node: Node): CID | null {
    if (node.keys.length === 0 && node.subtrees[0] === null) return null
    return this.#write(node)
  }

  #persistEmpty (): CID {
    return this.#write(emptyNode())
  }

  #write (node: Node): CID {
    const bytes = encodeMstNode(fromSlots(node))
    const cid = cidForBytes(bytes)
    const key = cidKey(cid)
    if (!this.#created.has(key)) this.#created.set(key, { cid, bytes, node })
    return cid
  }
}

function emptyNode (): Node {
  return { keys: [], values: [], subtrees: [null] }
}

function toSlots (node: MstNode): Node {
  const n = node.entries.length
  const keys = new Array<string>(n)
  const values = new Array<CID>(n)
  const subtrees = new Array<CID | null>(n + 1)
  subtrees[0] = node.left
  for (let i = 0; i < n; i++) {
    const entry = node.entries[i]
    keys[i] = entry.key
    values[i] = entry.value
    subtrees[i + 1] = entry.right
  }
  return { keys, values, subtrees }
}

function fromSlots (node: Node): MstNode {
  return {
    left: node.subtrees[0],
    entries: node.keys.map((key, i) => ({ key, value: node.values[i], right: node.subtrees[i + 1] }))
  }
}

/** Index of the first key >= `key` (binary search; keys are sorted). */
function gteIndex (keys: readonly string[], key: string): number {
  let lo = 0
  let hi = keys.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (keys[mid] < key) lo = mid + 1
    else hi = mid
  }
  return lo
}

function insertAt<T> (list: readonly T[], i: number, item: T): T[] {
  return [...list.slice(0, i), item, ...list.slice(i)]
}

function removeAt<T> (list: readonly T[], i: number): T[] {
  return [...list.slice(0, i), ...list.slice(i + 1)]
}
